"""Non-finite values in training: a nan or inf loss, gradient norm, reward or advantage.

One optimizer step on such a value makes every weight nan, and every checkpoint written after it
is worthless. So a training stage checks them before its optimizer steps and by default stops:
nothing is saved after the last good checkpoint, and the command exits with EXIT_NONFINITE,
naming the quantity and the step. With `<stage>.skip_nonfinite=true` the step is skipped instead
(no optimizer step for that batch), counted in the metric `nonfinite_skipped` and warned about.

With several ranks the ranks agree first (a value bad on any rank stops or skips on every one),
as every rank must take the same steps.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from rlhf.core import distributed

log = logging.getLogger(__name__)

EXIT_NONFINITE = 4  # stopped before a step on a non-finite value; the last checkpoint is intact


class NonFiniteError(Exception):
    """Raised before the optimizer steps on a non-finite value; the command exits with EXIT_NONFINITE."""


class NonFiniteGuard:
    """Checks values before a step: stops the stage (NonFiniteError) or, with `skip`, counts the
    skipped step (`skipped`) and warns. `setting` names the option that turns skipping on."""

    def __init__(self, skip: bool, setting: str):
        self.skip = skip
        self.setting = setting
        self.skipped = 0

    def finite(self, where: str, skipping: str, values: dict[str, torch.Tensor | float | None],
               rows: Optional[Sequence[str]] = None, cannot_skip: Optional[str] = None) -> bool:
        """True when every value (by name; None: not computed, not checked) is finite on every
        rank. Else, skipping: warns that `skipping` (what is dropped) is skipped, counts it and
        returns False; not skipping, or when `cannot_skip` says why it is impossible here: raises
        NonFiniteError. `where`: the step, for the message; `rows`: the prompt of each row of
        the values, to name the first bad one."""
        problems = [_describe(name, value, rows) for name, value in values.items()
                    if value is not None and not bool(torch.isfinite(torch.as_tensor(value)).all())]
        if not _on_any_rank(bool(problems)):
            return True
        problem = "; ".join(dict.fromkeys(distributed.gather_objects(problems)))  # every rank's, for rank 0's log
        if not self.skip:
            raise NonFiniteError(f"{problem} at {where}: stopped before the optimizer step, so the last checkpoint "
                                 "is intact and nothing was saved after it. Look for the cause (learning rate, "
                                 f"data, reward), or set {self.setting}=true to skip such steps")
        if cannot_skip:
            raise NonFiniteError(f"{problem} at {where}: stopped, though {self.setting}=true: {cannot_skip}. The last "
                                 "checkpoint is intact and nothing was saved after it")
        self.skipped += 1
        log.warning("%s at %s: skipping %s (%s=true; %d skipped so far)", problem, where, skipping, self.setting,
                    self.skipped)
        return False


def _describe(name: str, value, rows: Optional[Sequence[str]]) -> str:
    t = torch.as_tensor(value).detach()
    if t.numel() == 1:
        return f"{name} is {t.item()}"
    bad = ~torch.isfinite(t)
    text = f"{name} has {int(bad.sum())} non-finite values of {t.numel()}"
    if rows is not None and t.dim() >= 1 and len(t) == len(rows):
        first = int(bad.reshape(len(t), -1).any(1).nonzero()[0])
        text += f" (the first on prompt {rows[first][:200]!r})"
    return text


def _on_any_rank(flag: bool) -> bool:
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
