"""Sampling from a policy: the one sampler every stage calls (SFT's gold evaluation, stage 3's
rollouts, compare, best-of-n, generate), and the log-probabilities of given responses.

Prompts are formatted by the data layer and left-padded, so every sequence in a batch ends at
the same column and generation continues each prompt flush. A response ends at its first EOS;
what a batch generates after that is padding and is cut off here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rlhf.core.distributed import full_weights
from rlhf.core.ops import entropy_from_logits, pad_right, positions
from rlhf.data import encode_prompts
from rlhf.data.records import PromptLike
from rlhf.sampling.prefix import cache_kwarg, prompt_once, widen


@dataclass(frozen=True)
class Sample:
    prompt: PromptLike
    text: str  # decoded response, special tokens removed
    token_ids: tuple[int, ...]  # response tokens, up to and including the first EOS
    ended: bool  # an EOS closed it within max_new_tokens
    logprob: float  # sum of log pi(token) over token_ids at the sampling temperature, kept as sampled


# A row whose answer has ended leaves the decoding batch (and its cache) once this share of the
# batch has ended: compacting copies every remaining row's cache, so not for each single row.
COMPACT_ENDED_SHARE = 0.125


@torch.no_grad()
def sample(model, input_ids, attention_mask, *, max_new_tokens: int, temperature: float, eos_id: int,
           pad_id: int, n: int = 1, min_new_tokens: int = 0, greedy: bool = False):
    """Pure sampling (top_k 0, top_p 1) with a KV cache, or greedy decoding, keeping each token's
    log-prob and the step's entropy as it goes: PPO's rollout forward pass is the sampling itself,
    not a second pass over the finished sequences. Only one position's logits exist at a time.

    `input_ids` [U, P] are distinct prompts, each answered `n` times in consecutive rows: a prompt
    is prefilled once and its cache copied to its n rows. Rows whose answer has ended leave the
    decoding batch and the cache (COMPACT_ENDED_SHARE); the random numbers are still drawn for
    every row, so the answers are those of decoding all U * n rows to the end.
    Returns (responses, logprobs, entropy), each [U * n, <= max_new_tokens]; after a row's EOS,
    PAD with log-prob and entropy 0."""
    cache_arg = cache_kwarg(model)
    cache = _kv_cache(model.config, input_ids.shape[1] + max_new_tokens)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                   use_cache=True, logits_to_keep=1, **{cache_arg: cache}).logits[:, -1]
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, attention_mask = logits.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
    rows, device = len(logits), logits.device
    position = positions(attention_mask)[:, -1:]
    present = torch.arange(rows, device=device)  # the rows in the decoding batch, in order
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(rows, max_new_tokens, device=device)
    entropies = torch.zeros(rows, max_new_tokens, device=device)
    for step in range(max_new_tokens):
        scaled = logits.float() / temperature
        if step < min_new_tokens:
            scaled[:, eos_id] = float("-inf")
        logp = torch.log_softmax(scaled, -1)
        # one number per row of the whole batch, as if every row were still decoding
        token = logp.argmax(-1) if greedy else _draw(logp, torch.rand(rows, 1, device=device)[present])
        live = ~ended[present]
        answering, drawn, lp = present[live], token[live], logp[live]
        tokens[answering, step] = drawn
        logprobs[answering, step] = lp.gather(1, drawn[:, None]).squeeze(1)
        entropies[answering, step] = -(lp.exp() * lp).nan_to_num().sum(-1)
        ended[answering] |= drawn == eos_id
        if ended.all() or step == max_new_tokens - 1:
            break
        gone = ended[present]
        if gone.sum() >= COMPACT_ENDED_SHARE * len(present):
            keep = (~gone).nonzero().squeeze(1)
            present, token, attention_mask, position = present[keep], token[keep], attention_mask[keep], position[keep]
            cache.batch_select_indices(keep)
        # a row that ended but has not left yet reads PAD; what it computes there is never kept
        token = torch.where(ended[present], pad_id, token)
        attention_mask = torch.cat([attention_mask, torch.ones_like(token)[:, None]], 1)
        position = position + 1
        logits = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=position,
                       use_cache=True, **{cache_arg: cache}).logits[:, -1]
    width = step + 1
    return tokens[:, :width], logprobs[:, :width], entropies[:, :width]


@dataclass
class Samples:
    """A sampler's answers to a batch of prompts, n per prompt in consecutive rows: what stage
    3's rollout scores. Every stage-3 sampler (`PolicySampler`, the vLLM engine) returns these."""
    prompt_ids: torch.Tensor  # [B, P] the prompts, left-padded
    prompt_mask: torch.Tensor  # [B, P]
    responses: torch.Tensor  # [B, <= max_new_tokens]; PAD after a row's EOS
    logprobs: torch.Tensor  # [B, same] the sampler's own log-prob of each token at the temperature
    entropy: Optional[torch.Tensor]  # [B, same] the sampler's, where it has them
    # the policy itself sampled, so `logprobs` are the policy's; else its own come from a forward
    # pass over the tokens, and these stay beside them (the mismatch, truncated IS)
    by_policy: bool


def padded_prompts(tokenizer, prompt_ids: Sequence[Sequence[int]], n: int, device) -> dict[str, torch.Tensor]:
    """Each prompt n times in consecutive rows, left-padded (every sampler's batch layout)."""
    rows = [list(ids) for ids in prompt_ids for _ in range(n)]
    return tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt").to(device)


class PolicySampler:
    """Stage 3's default sampler: the policy answers with `sample`, so each token's log-prob
    comes with it and no second forward pass is needed; each prompt is prefilled once for its n
    answers."""

    def __init__(self, policy, tokenizer):
        self.policy, self.tokenizer = policy, tokenizer  # policy: a model or an engine around one

    @torch.no_grad()
    def sample(self, prompt_ids: Sequence[Sequence[int]], n: int = 1, *, max_new_tokens: int, temperature: float,
               min_new_tokens: int = 0) -> Samples:
        with full_weights(self.policy) as policy:  # ZeRO-3: gathered once per rollout, not per token
            batch = padded_prompts(self.tokenizer, prompt_ids, 1, next(policy.parameters()).device)
            responses, logprobs, entropy = sample(policy, batch["input_ids"], batch["attention_mask"], n=n,
                                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                                  eos_id=self.tokenizer.eos_token_id,
                                                  pad_id=self.tokenizer.pad_token_id, min_new_tokens=min_new_tokens)
        return Samples(batch["input_ids"].repeat_interleave(n, 0), batch["attention_mask"].repeat_interleave(n, 0),
                       responses, logprobs, entropy, by_policy=True)

    def sync(self, policy) -> dict[str, float]:
        """Nothing to push: it samples from the policy's weights as they are."""
        return {}


def response_logprobs(model, sequences, attention_mask, prompt_len: int, temperature: float,
                      with_entropy: bool = False, n: int = 1):
    """Log-probabilities of the response tokens under `model` at `temperature`, from the response
    positions' logits only (no full-sequence log-softmax kept). Rows in runs of `n` that share
    their prompt compute it once (rlhf.sampling.prefix)."""
    logits = prompt_once(model, sequences, attention_mask, prompt_len, n)[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # statistics in float32 at least
    if temperature != 1.0:  # skip a full copy of the logits when there is nothing to divide
        logits = logits / temperature
    targets = sequences[:, prompt_len:prompt_len + logits.shape[1]]
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    width = sequences.shape[1] - prompt_len
    return widen(logprobs, width), widen(entropy_from_logits(logits), width) if with_entropy else None


@torch.no_grad()
def response_logprob_sums(model, tokenizer, samples: Sequence[Sample], temperature: float,
                          batch_size: int = 64) -> torch.Tensor:
    """[len(samples)] sum of log pi(token) over each sample's response tokens (to and including
    its EOS) at `temperature`: one term of a sampled KL estimate between two policies."""
    was_training = model.training
    model.eval()
    device = model.device  # (PPO's LoRA reference, the policy with its adapter off, owns no parameters)
    sums = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            prompts = tokenizer.pad({"input_ids": encode_prompts(tokenizer, [s.prompt for s in chunk])},
                                    padding_side="left", return_tensors="pt")
            responses, mask = pad_right([s.token_ids for s in chunk], tokenizer.pad_token_id)
            sequences = torch.cat([prompts["input_ids"], responses], 1).to(device)
            attention = torch.cat([prompts["attention_mask"], mask], 1).to(device)
            logprobs, _ = response_logprobs(model, sequences, attention, prompts["input_ids"].shape[1], temperature)
            sums.append((logprobs * mask.to(device)).sum(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(sums) if sums else torch.zeros(0)


class _InPlaceLayer(DynamicLayer):
    """A KV-cache layer preallocated for the whole sequence and written in place, whose keys and
    values are views of the filled part. Ours because neither transformers cache fits: its
    DynamicCache copies every layer's keys and values at every token (concatenation), and its
    StaticCache attends over the whole preallocated length, masked, at every step. Measured on
    2 CPU cores per decoding step (benchmarks/kv_cache.py, docs/results.md): the medium
    benchmark model, 64 rows, 12% less time than DynamicCache and 14% less than StaticCache; the
    tiny one level with DynamicCache and 20% faster than StaticCache."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, _ = key_states.shape
        self._keys = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
        self._values = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self._filled = 0
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._filled + key_states.shape[-2]
        self._keys[:, :, self._filled:end] = key_states
        self._values[:, :, self._filled:end] = value_states
        self._filled = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row `repeats` times (a prompt's cache copied to its group's answers)."""
        if self.is_initialized:
            self._keys = self._keys.repeat_interleave(repeats, 0)
            self._values = self._values.repeat_interleave(repeats, 0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Only the rows `indices`, moved to the front of the same storage: only the filled part
        is copied and nothing is allocated but the copy's source."""
        if self.is_initialized:
            kept = len(indices)
            self._keys[:kept, :, :self._filled] = self._keys[indices, :, :self._filled]
            self._values[:kept, :, :self._filled] = self._values[indices, :, :self._filled]
            self._keys, self._values = self._keys[:kept], self._values[:kept]
            self._views()

    def _views(self) -> None:
        self.keys, self.values = self._keys[:, :, :self._filled], self._values[:, :, :self._filled]


def _kv_cache(config, capacity: int) -> DynamicCache:
    """A cache of _InPlaceLayer for `capacity` tokens; transformers' own for models whose layers
    are not all plain attention (sliding windows, ...)."""
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_InPlaceLayer(capacity) for _ in cache.layers]
    return cache


def _draw(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row from exp(logp), by inverse CDF at `u` [rows, 1], uniform in [0, 1): one
    random number per row. As exact as torch.multinomial, which on CPU draws far more random
    numbers (measured at 64 x 4096 on 2 cores: 8.0 ms a call vs 0.48 ms, in a decoding step of ~30 ms)."""
    cdf = logp.exp().cumsum(-1)
    return torch.searchsorted(cdf, u.to(cdf.dtype) * cdf[:, -1:], right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


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
            responses, logprobs, _ = sample(model, batch["input_ids"], batch["attention_mask"],
                                     max_new_tokens=max_new_tokens, temperature=temperature,
                                     eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, greedy=greedy)
            for prompt, row, row_logprobs in zip(chunk, responses.tolist(), logprobs):
                ended = tokenizer.eos_token_id in row
                ids = row[: row.index(tokenizer.eos_token_id) + 1] if ended else row
                samples.append(Sample(prompt, tokenizer.decode(ids, skip_special_tokens=True), tuple(ids), ended,
                                      row_logprobs[: len(ids)].sum().item()))
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return samples
