"""Tensor helpers every layer may use: masked statistics, entropy, position ids and padding.

Response tensors are [batch, response_tokens]; `mask` is 1 on the tokens that count (a response
up to and including its first EOS) and 0 after them and on padding.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """(x - mean) / std over the masked entries of the whole batch; unbiased variance as in
    the reference implementations. shift_mean=False keeps the mean (used for rewards). With
    several ranks, `total` sums a tensor across them, so the statistics are the global batch's."""
    count = total(mask.sum())
    mean = total((x * mask).sum()) / count.clamp(min=1)
    centered = (x - mean) * mask
    var = total((centered**2).sum()) / (count - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits), without keeping a log-softmax tensor around."""
    logz = torch.logsumexp(logits, dim=-1)
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, as generation used them:
    left padding must not shift a rotary model's positions."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def pad_right(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded [len(rows), longest], mask): rows of token ids left-aligned, `value` after each;
    mask is 1 on the rows' own entries. Right padding keeps positions starting at 0, as in
    training, and a sequence classifier reads the last non-pad token either way."""
    width = max((len(r) for r in rows), default=0)
    padded = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return padded, mask
