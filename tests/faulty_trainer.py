"""`python tests/faulty_trainer.py train ...` (or torchrun tests/faulty_trainer.py train ...): the real
`python -m dlrm`, with a hung rank injected by patching the trainer's step, for the fault tests.

FAULT_HANG_AT_STEP=N makes rank FAULT_HANG_RANK (default 1) stop participating before step N for
FAULT_HANG_S seconds (default 1 h), as a hung peer would: the rest of the job blocks in its next
collective. SIGUSR1 ends the hang early (a test that has seen what it waited for need not sit out
the rest). FAULT_PARK_WRITE_AT_STEP=N makes rank FAULT_PARK_WRITE_RANK (default 1) write the first
bytes of its step-N checkpoint file, then park the writer (up to FAULT_HANG_S) as a slow disk or
bucket would; FAULT_KILL_AT_STEP=N SIGKILLs rank FAULT_KILL_RANK (default 0) before step N. The
variables and the signal are the test's; the product reads none of them.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

HANG_AT, HANG_RANK, HANG_S = "FAULT_HANG_AT_STEP", "FAULT_HANG_RANK", "FAULT_HANG_S"
PARK_WRITE_AT, PARK_WRITE_RANK = "FAULT_PARK_WRITE_AT_STEP", "FAULT_PARK_WRITE_RANK"
KILL_AT, KILL_RANK = "FAULT_KILL_AT_STEP", "FAULT_KILL_RANK"
SCRIPT = str(Path(__file__).resolve())


def install() -> None:
    # SIGUSR1 is blocked before `import torch` starts any thread (threads inherit the mask), so one
    # sent at any time waits, pending, for the park below to take it: no handler, no race.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    from dlrm.training.train import Trainer

    hang_at, hang_rank = int(os.environ.get(HANG_AT) or 0), int(os.environ.get(HANG_RANK) or 1)
    real_step = Trainer.train_step

    kill_at, kill_rank = int(os.environ.get(KILL_AT) or 0), int(os.environ.get(KILL_RANK) or 0)

    def train_step(self, batch):
        if self.step + 1 == hang_at and self.runtime.rank == hang_rank:
            print(f"test hook: rank {self.runtime.rank} hangs before step {hang_at}", flush=True)
            signal.sigtimedwait({signal.SIGUSR1}, float(os.environ.get(HANG_S) or 3600))
        if self.step + 1 == kill_at and self.runtime.rank == kill_rank:
            print(f"test hook: rank {self.runtime.rank} killed before step {kill_at}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, batch)

    Trainer.train_step = train_step
    park_at = int(os.environ.get(PARK_WRITE_AT) or 0)
    if park_at:
        import io

        import torch

        from dlrm.io import checkpoint

        real_save, park_rank = checkpoint._save, int(os.environ.get(PARK_WRITE_RANK) or 1)
        target = f"{checkpoint.checkpoint_name(park_at)}/rank-{park_rank}.pt"

        def save(obj, path, name):
            if target in name:  # the file being written, cut short: what a kill mid-write leaves
                blob = io.BytesIO()
                torch.save(obj, blob)
                with open(path, "wb") as fh:
                    fh.write(blob.getvalue()[: len(blob.getvalue()) // 2])
                print(f"test hook: {target} parks half-written", flush=True)
                signal.sigtimedwait({signal.SIGUSR1}, float(os.environ.get(HANG_S) or 3600))
            return real_save(obj, path, name)

        checkpoint._save = save


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the checkout's root, as `-m dlrm` from it (not tests/)
    install()
    from dlrm.__main__ import main

    sys.exit(main())
