"""`python tests/faulty_trainer.py train ...` (or torchrun tests/faulty_trainer.py train ...): the real
`python -m dlrm`, with a hung rank injected by patching the trainer's step, for the fault tests.

FAULT_HANG_AT_STEP=N makes rank FAULT_HANG_RANK (default 1) stop participating before step N for
FAULT_HANG_S seconds (default 1 h), as a hung peer would: the rest of the job blocks in its next
collective. SIGUSR1 ends the hang early (a test that has seen what it waited for need not sit out
the rest). The variables and the signal are the test's; the product reads none of them.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

HANG_AT, HANG_RANK, HANG_S = "FAULT_HANG_AT_STEP", "FAULT_HANG_RANK", "FAULT_HANG_S"
SCRIPT = str(Path(__file__).resolve())


def install() -> None:
    # SIGUSR1 is blocked before `import torch` starts any thread (threads inherit the mask), so one
    # sent at any time waits, pending, for the park below to take it: no handler, no race.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    from dlrm.training.train import Trainer

    hang_at, hang_rank = int(os.environ.get(HANG_AT) or 0), int(os.environ.get(HANG_RANK) or 1)
    real_step = Trainer.train_step

    def train_step(self, batch):
        if self.step + 1 == hang_at and self.runtime.rank == hang_rank:
            print(f"test hook: rank {self.runtime.rank} hangs before step {hang_at}", flush=True)
            signal.sigtimedwait({signal.SIGUSR1}, float(os.environ.get(HANG_S) or 3600))
        return real_step(self, batch)

    Trainer.train_step = train_step


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the checkout's root, as `-m dlrm` from it (not tests/)
    install()
    from dlrm.__main__ import main

    sys.exit(main())
