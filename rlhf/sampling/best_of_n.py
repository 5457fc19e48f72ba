"""Best-of-n: n sampled answers per prompt, the one the reward source scores highest kept. The
classic baseline for stage 3 (compare's bon:<n>), and the picks of best-of-n distillation
(rlhf stage=bon_sft)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rlhf.data.records import PromptLike
from rlhf.sampling.generate import Sample, generate
from rlhf.sampling.reward import reward_scores


@dataclass
class BestOfN:
    best: list[Sample]  # one per prompt: the candidate with the highest score
    best_scores: torch.Tensor  # [prompts] its score (a reward model's normalised)
    candidates: list[list[Sample]]  # [n][prompts]
    scores: torch.Tensor  # [n, prompts]


def best_of_n(policy, reward, tokenizer, prompts: Sequence[PromptLike], *, seeds: Sequence[int],
              max_new_tokens: int, temperature: float = 1.0, batch_size: int = 64,
              unfinished_score: float | None = None) -> BestOfN:
    """n = len(seeds) candidates per prompt, candidate k sampled with seeds[k] (so a rerun, or
    another policy given the same seeds, draws the same way), scored by `reward`: a reward model
    or a FunctionReward. Ties go to the lowest k. `unfinished_score` replaces the score of a
    candidate that never emitted EOS (-inf: pick one that ended whenever there is one)."""
    candidates = [generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=batch_size, seed=seed) for seed in seeds]
    scores = torch.stack([reward_scores(reward, tokenizer, [a.prompt for a in cand], [a.text for a in cand])
                          for cand in candidates])
    if unfinished_score is not None:
        ended = torch.tensor([[a.ended for a in cand] for cand in candidates])
        scores = torch.where(ended, scores, torch.tensor(unfinished_score, dtype=scores.dtype))
    best_scores, pick = scores.max(0)
    best = [candidates[k][i] for i, k in enumerate(pick.tolist())]
    return BestOfN(best, best_scores, candidates, scores)
