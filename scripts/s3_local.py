"""`make s3-local`: a local S3 endpoint to try the S3 commands on (moto's server on 127.0.0.1), with
its buckets made, in the foreground until Ctrl-C. Objects live in memory: they go with the server.

    python scripts/s3_local.py [--port 5000] BUCKET...
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

# The variables every AWS client here reads (boto3, TensorBoard, the launcher and the trainer).
ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="make s3-local", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("buckets", nargs="*")
    args = p.parse_args(argv)
    with socket.socket() as s:  # moto's server thread would die with its traceback instead
        try:
            s.bind(("127.0.0.1", args.port))
        except OSError as e:
            print(f"error: port {args.port} on 127.0.0.1: {e.strerror}; choose another with S3_PORT=...", file=sys.stderr)
            return 1
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{args.port}"
    s3 = boto3.client("s3", endpoint_url=url, region_name=ENV["AWS_REGION"], aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"])
    for bucket in args.buckets:
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.ClientError as e:
            server.stop()
            print(f"error: bucket {bucket!r}: {e.response['Error']['Message']} (3-63 lowercase letters, digits, '-' and '.')",
                  file=sys.stderr)
            return 2
    print(f"S3 at {url} with bucket(s) {', '.join(args.buckets) or '(none)'}, in memory until Ctrl-C. In another shell:")
    print("  export AWS_ENDPOINT_URL=" + url + " " + " ".join(f"{k}={v}" for k, v in ENV.items()), flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, a kill, or make started in the background (SIGINT ignored)
        signal.signal(sig, signal.default_int_handler)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("S3 server stopped (its objects are gone)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
