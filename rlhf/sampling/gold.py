"""Where a policy stands on a task with a gold scorer (the toy task): greedy and sampled answers."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rlhf.data.records import PromptLike
from rlhf.sampling.generate import generate, response_logprob_sums


def gold_evaluation(model, tokenizer, prompts: Sequence[PromptLike], scorer: Callable[[PromptLike, str], float],
                    *, max_new_tokens: int, seed: int, reference=None) -> dict[str, float]:
    """Gold score of greedy and sampled (T = 1) answers: mean, share of perfect answers, and how
    often the answer ended with EOS. What a user reads to know where a policy stands. With a
    `reference` policy, also `kl_sampled_mean`: the KL to it in nats per answer, estimated on the
    sampled answers as compare does (mean of log pi - log pi_ref summed over each answer)."""
    metrics: dict[str, float] = {}
    for mode in ("greedy", "sampled"):
        samples = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                           greedy=mode == "greedy", seed=seed)
        gold = torch.tensor([scorer(s.prompt, s.text) for s in samples])
        metrics[f"gold_{mode}_mean"] = gold.mean().item()
        metrics[f"gold_{mode}_perfect"] = (gold == 1.0).float().mean().item()
        metrics[f"eos_{mode}_rate"] = sum(s.ended for s in samples) / len(samples)
        if mode == "sampled" and reference is not None:
            ref = response_logprob_sums(reference, tokenizer, samples, temperature=1.0)
            metrics["kl_sampled_mean"] = (torch.tensor([s.logprob for s in samples]) - ref).mean().item()
    return metrics
