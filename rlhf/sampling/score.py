"""Scoring (prompt, response) pairs with a reward model, formatted exactly as it trained on
them. The reward sources built on it (a model, a function, an ensemble, a weighted sum) are in
reward.py."""

from __future__ import annotations

from typing import Sequence

import torch

from rlhf.data import encode_prompts, encode_responses
from rlhf.data.records import PromptLike
from rlhf.models.reward import reward_bias


@torch.no_grad()
def score(model, tokenizer, prompts: Sequence[PromptLike], responses: Sequence[str], *,
          max_batch_tokens: int = 16384, normalized: bool = True) -> torch.Tensor:
    """Reward-model scores of (prompt, response) pairs, formatted exactly as the RM trained on
    them. `normalized` adds the bias saved by the RM stage (demonstrations then score mean 0).
    Sequences are batched by length (at most `max_batch_tokens` padded tokens a batch), so a few
    long ones do not make every batch long."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sequences = [p + r for p, r in zip(encode_prompts(tokenizer, prompts), encode_responses(tokenizer, responses))]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    raw = torch.zeros(len(sequences))
    try:
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * len(sequences[order[end]]) <= max_batch_tokens:
                end += 1
            rows = order[start:end]
            # Right padding: positions then start at 0 as in training, and the score is read at the
            # last non-pad token either way.
            batch = tokenizer.pad({"input_ids": [sequences[i] for i in rows]}, padding_side="right",
                                  return_tensors="pt").to(device)
            raw[rows] = model(**batch).logits[:, 0].float().cpu()
            start = end
    finally:
        model.train(was_training)
    return raw + reward_bias(model) if normalized else raw
