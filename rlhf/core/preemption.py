"""Stopping cleanly when asked: SIGTERM (scancel, a node drain, Slurm's time limit) or SIGUSR1
(Slurm's warning before preemption, `--signal=USR1@<seconds>`) makes a training stage write a
checkpoint at the end of its current step and exit with EXIT_PREEMPTED; rerun with the same
run name, it continues from that checkpoint.

The handler only sets a flag; the training loops look at it between steps. With several ranks
they agree first (any rank signalled stops every rank), so all write the same step's checkpoint.
"""

from __future__ import annotations

import logging
import signal

import torch

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 3  # checkpoint written; rerun the same command to continue
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised after the checkpoint is written; the command exits with EXIT_PREEMPTED."""


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: checkpointing at the end of this step, then exiting", self.signal_name)

    def requested(self) -> bool:
        """True on every rank when any rank has been signalled (a collective under torchrun)."""
        asked = torch.tensor([1.0 if self.signal_name else 0.0])
        if torch.distributed.is_initialized():
            if torch.distributed.get_backend() == "nccl":
                asked = asked.cuda()
            torch.distributed.all_reduce(asked, op=torch.distributed.ReduceOp.MAX)
        if asked.item() and self.signal_name is None:
            self.signal_name = "a signal to another rank"
        return bool(asked.item())

    def stop(self, where: str) -> None:
        raise Preempted(f"stopped by {self.signal_name} after writing {where}; rerun the same command to continue")


_current: StopRequest | None = None


def stop_request() -> StopRequest:
    """The process's one StopRequest, installing the signal handlers on first use."""
    global _current
    if _current is None:
        _current = StopRequest()
    return _current
