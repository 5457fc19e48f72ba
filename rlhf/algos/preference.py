"""Preference losses we write ourselves: the K-wise reward-model loss of InstructGPT (trl's
RewardTrainer knows only chosen/rejected pairs; DPO's loss comes from trl's DPOTrainer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kwise_loss(scores: torch.Tensor, better: torch.Tensor, worse: torch.Tensor, group: torch.Tensor,
               margin: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean over groups (prompts) of the mean over the group's pairs of
    -log sigmoid(score[better] - score[worse] - margin). Indices point into `scores`."""
    per_pair = -F.logsigmoid(scores[better] - scores[worse] - margin)
    total = torch.zeros(num_groups, dtype=per_pair.dtype, device=per_pair.device).index_add(0, group, per_pair)
    count = torch.zeros_like(total).index_add(0, group, torch.ones_like(per_pair))
    return (total / count.clamp(min=1))[count > 0].mean()
