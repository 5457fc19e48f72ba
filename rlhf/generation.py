"""Sampling from a policy and scoring with a reward model: the one service every stage calls
(SFT's gold evaluation, RM normalisation, PPO's rollouts, compare, best-of-n).

Prompts are formatted by the data layer and left-padded, so every sequence in a batch ends at
the same column and generation continues each prompt flush. A response ends at its first EOS;
what a batch generates after that is padding and is cut off here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rlhf.data import encode_prompts, encode_responses
from rlhf.data.records import PromptLike

REWARD_NORM_KEY = "rlhf_reward_normalization"  # in the RM's config.json: bias, raw_mean, raw_std


@dataclass(frozen=True)
class Sample:
    prompt: PromptLike
    text: str  # decoded response, special tokens removed
    token_ids: tuple[int, ...]  # response tokens, up to and including the first EOS
    ended: bool  # an EOS closed it within max_new_tokens


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[PromptLike], *, max_new_tokens: int,
             greedy: bool = False, temperature: float = 1.0, batch_size: int = 64,
             seed: int | None = None) -> list[Sample]:
    """Pure sampling (top_k 0, top_p 1) at `temperature`, or greedy decoding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    samples: list[Sample] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            batch = tokenizer.pad({"input_ids": encode_prompts(tokenizer, chunk)}, padding_side="left",
                                  return_tensors="pt").to(device)
            sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=not greedy,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **sampling)
            for prompt, row in zip(chunk, out[:, batch["input_ids"].shape[1]:].tolist()):
                ended = tokenizer.eos_token_id in row
                ids = row[: row.index(tokenizer.eos_token_id) + 1] if ended else row
                samples.append(Sample(prompt, tokenizer.decode(ids, skip_special_tokens=True), tuple(ids), ended))
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return samples


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


def reward_bias(model) -> float:
    return float((getattr(model.config, REWARD_NORM_KEY, None) or {}).get("bias", 0.0))


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
