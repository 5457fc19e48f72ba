"""Where a policy stands on a task with a gold scorer (the toy task): greedy and sampled answers."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rlhf.data.records import PromptLike
from rlhf.sampling.generate import generate


def gold_evaluation(model, tokenizer, prompts: Sequence[PromptLike], scorer: Callable[[PromptLike, str], float],
                    *, max_new_tokens: int, seed: int) -> dict[str, float]:
    """Gold score of greedy and sampled (T = 1) answers: mean, share of perfect answers, and how
    often the answer ended with EOS. What a user reads to know where a policy stands."""
    metrics: dict[str, float] = {}
    for mode in ("greedy", "sampled"):
        samples = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                           greedy=mode == "greedy", seed=seed)
        gold = torch.tensor([scorer(s.prompt, s.text) for s in samples])
        metrics[f"gold_{mode}_mean"] = gold.mean().item()
        metrics[f"gold_{mode}_perfect"] = (gold == 1.0).float().mean().item()
        metrics[f"eos_{mode}_rate"] = sum(s.ended for s in samples) / len(samples)
    return metrics
