"""Reward sources: scoring (prompt, response) pairs with a reward model, formatted exactly as
it trained on them, or with a Python function (FunctionReward)."""

from __future__ import annotations

import importlib
import math
from typing import Sequence

import torch

from rlhf.config import ConfigError
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


class FunctionReward:
    """A reward source that is a Python callable (prompt, response) -> float, named
    `package.module:name` (reward.source=function): the toy task's gold scorer, an exact-match
    check. It scores decoded text, so it needs no model, no tokens and no normalisation."""

    def __init__(self, spec: str):
        module, _, name = spec.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"reward.function={spec!r}: cannot load it ({e}); give package.module:name of a "
                              "callable (prompt, response) -> float on the Python path") from e
        if not callable(self.fn):
            raise ConfigError(f"reward.function={spec!r} is not callable")
        self.spec = spec

    def score_texts(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        scores = []
        for prompt, response in zip(prompts, responses):
            try:
                value = float(self.fn(prompt, response))
            except Exception as e:  # the user's code: any failure stops the run, naming the input
                raise ConfigError(f"reward.function={self.spec} raised {type(e).__name__}: {e} on prompt "
                                  f"{prompt!r}, response {response!r}") from e
            if not math.isfinite(value):
                raise ConfigError(f"reward.function={self.spec} returned {value} on prompt {prompt!r}, response "
                                  f"{response!r}: a reward must be a finite number")
            scores.append(value)
        return torch.tensor(scores)


def reward_scores(reward, tokenizer, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
    """Scores from either reward source: a reward model (normalised) or a FunctionReward."""
    if isinstance(reward, FunctionReward):
        return reward.score_texts(prompts, responses)
    return score(reward, tokenizer, prompts, responses)
