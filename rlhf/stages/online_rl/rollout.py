"""Stage 3's rollout: prompts in, scored responses out.

Each prompt is answered `samples_per_prompt` times (the copies share a group id); every
response is sampled from the policy (temperature T, top_k 0, top_p 1) and cut after its first
EOS, keeping each token's log-prob as it is sampled (ppo.rollout_engine=vllm: sampled by a vLLM
engine holding the policy's weights, and the log-probs then taken by one forward pass of the
policy, the engine's kept beside them); then one forward pass each of the reference,
the critic (when there is one) and the reward source's models (a function reads the decoded
text), in chunks of micro-batch rows to bound the memory of the reference's logits. A group's
prompt is prefilled once and read once per pass, and the chunks hold whole groups of similar
lengths, so that little padding is computed (rlhf.sampling.prefix). Turning scores into
rewards is the loop's business, not this.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import torch

from rlhf.config import RLHFConfig
from rlhf.core import distributed
from rlhf.core.artifacts import StageRun
from rlhf.core.distributed import module_of
from rlhf.data import encode_prompts
from rlhf.models import unwrap
from rlhf.sampling import response_logprobs
from rlhf.sampling.generate import PolicySampler
from rlhf.sampling.prefix import length_sorted, prompt_once, run_length, widen
from rlhf.stages.online_rl.roles import Roles, micro_rows

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    sequences: torch.Tensor  # [B, P + R] left-padded prompt, then the response, then padding
    attention_mask: torch.Tensor  # [B, P + R]
    mask: torch.Tensor  # [B, R] 1 on response tokens up to and including the first EOS
    logprobs: torch.Tensor  # [B, R] under the policy that sampled them (logits / T)
    ref_logprobs: torch.Tensor  # [B, R] under the frozen reference
    values: Optional[torch.Tensor]  # [B, R] the critic's, before each token; None without a critic
    scores: torch.Tensor  # [B] the reward source's (a reward model's normalised, a function's as returned)
    ended: torch.Tensor  # [B] bool: the response emitted EOS
    entropy: torch.Tensor  # [B, R]
    groups: torch.Tensor  # [B] the prompt each response answers
    texts: list[str]  # decoded responses
    seconds: dict[str, float]  # wall time of this rollout's phases: generate, score
    prompts: Optional[list] = None  # the prompt of each row, where the caller gave them
    # [B, R] the sampler's own log-probs when that is not the policy (vLLM), else None;
    # `logprobs` are then the policy's, from a forward pass over the sampled sequences
    engine_logprobs: Optional[torch.Tensor] = None

    @property
    def prompt_len(self) -> int:
        return self.sequences.shape[1] - self.mask.shape[1]


def eos_mask(responses: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is 1 up to and including the first EOS (all ones if none)."""
    is_eos = responses == eos_id
    ended = is_eos.any(1)
    first = torch.where(ended, is_eos.float().argmax(1), torch.full_like(ended, responses.shape[1], dtype=torch.long))
    idx = torch.arange(responses.shape[1], device=responses.device)
    return (idx[None, :] <= first[:, None]).long(), ended


def token_values(critic, sequences, attention_mask, prompt_len: int, n: int = 1) -> torch.Tensor:
    """The critic's value before each response token: the score head on every position's
    hidden state (a sequence classifier reads only the last one); rows in runs of `n` that share
    their prompt compute it once."""
    model = unwrap(module_of(critic))  # with LoRA: the adapters stay active, the score head is peft's copy
    backbone = getattr(model, model.base_model_prefix)
    hidden = prompt_once(backbone, sequences, attention_mask, prompt_len, n, hidden=True)
    return widen(model.score(hidden[:, :-1]).squeeze(-1).float(), sequences.shape[1] - prompt_len)


@torch.no_grad()
def rollout(roles: Roles, tokenizer, prompt_ids: list[list[int]], p, max_new_tokens: int,
            groups: Optional[torch.Tensor] = None, min_new_tokens: int = 0, prompts: Optional[list] = None,
            sampler=None) -> Rollout:
    """`prompt_ids` are formatted prompts (rlhf.data.encode_prompts), one row per response;
    `groups` their prompt ids (default: each its own); `prompts` the prompts themselves, which a
    reward function scores with the decoded responses (a reward model reads the tokens). min_new_tokens > 0
    holds EOS back until then (the throughput benchmark samples fixed-length responses).
    `sampler`: what answers (`build_sampler`); default the policy itself."""
    roles.policy.eval()
    start = time.perf_counter()
    n = run_length(prompt_ids)  # a group's rows: its prompt is prefilled and read once
    s = (sampler or PolicySampler(roles.policy, tokenizer)).sample(
        prompt_ids[::n], n, max_new_tokens=max_new_tokens, temperature=p.temperature, min_new_tokens=min_new_tokens)
    device = s.responses.device  # every tensor of the rollout lives there
    prompt_len = s.prompt_ids.shape[1]
    mask, ended = eos_mask(s.responses, tokenizer.eos_token_id)
    responses = torch.where(mask.bool(), s.responses, tokenizer.pad_token_id)  # tokens after EOS -> PAD
    sequences = torch.cat([s.prompt_ids, responses], 1)
    attention_mask = torch.cat([s.prompt_mask, mask], 1)

    generated = time.perf_counter()

    parts: dict[str, list[torch.Tensor]] = {"ref": [], "values": [], "policy": [], "entropy": []}
    # (under ZeRO-3 each of these forward passes is a collective: every rank runs as many chunks)
    chunk = max(n, micro_rows(p) // n * n)  # whole groups, of similar lengths: little padding to compute
    order = length_sorted(mask.sum(1), n)
    for rows in order.split(chunk):
        seq, att = sequences[rows], attention_mask[rows]
        if not s.by_policy:  # the PPO ratio's old log-probs from the policy itself, not the sampler's numerics
            policy_logprobs, policy_entropy = response_logprobs(roles.policy, seq, att, prompt_len, p.temperature,
                                                                with_entropy=True, n=n)
            parts["policy"].append(policy_logprobs.float())
            parts["entropy"].append(policy_entropy.float())
        parts["ref"].append(response_logprobs(roles.ref, seq, att, prompt_len, p.temperature, n=n)[0])
        if roles.critic is not None:
            parts["values"].append(token_values(roles.critic, seq, att, prompt_len, n))
    back = order.argsort()  # the chunks' rows back in rollout order
    logprobs, entropy, sampler_logprobs = s.logprobs, s.entropy, None
    if not s.by_policy:
        logprobs, entropy = torch.cat(parts["policy"])[back], torch.cat(parts["entropy"])[back]
        sampler_logprobs = s.logprobs * mask
    logprobs, entropy = logprobs * mask, entropy * mask
    ref_logprobs = torch.cat(parts["ref"]).float()[back]
    values = torch.cat(parts["values"]).float()[back] * mask if parts["values"] else None
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    ordered = order.tolist()
    scores = roles.reward.score_sequences(sequences[order], attention_mask[order],
                                          None if prompts is None else [prompts[i] for i in ordered],
                                          [texts[i] for i in ordered], chunk, prompt_len, n)
    scores = scores.float().to(device)[back]
    roles.policy.train()
    seconds = {"generate": generated - start, "score": time.perf_counter() - generated}
    return Rollout(sequences, attention_mask, mask.float(), logprobs, ref_logprobs, values, scores, ended, entropy,
                   (groups if groups is not None else torch.arange(len(sequences))).to(device), texts, seconds,
                   prompts, sampler_logprobs)


def build_sampler(cfg: RLHFConfig, roles: Roles, tokenizer, probe_prompts: list, max_new_tokens: int,
                  stage_run: StageRun, update: int):
    """What samples the rollouts: the policy itself, or (ppo.rollout_engine=vllm) a vLLM engine
    holding the policy's weights as they are now (at the start, or as a resumed checkpoint left
    them), checked against the policy on the probe prompts: the largest |log-prob difference|
    goes to the log and to the manifest's metrics (`engine_sync_check`)."""
    if cfg.ppo.rollout_engine != "vllm":
        return PolicySampler(roles.policy, tokenizer)
    from rlhf.sampling.vllm_engine import VLLMEngine

    engine = VLLMEngine(roles.policy, tokenizer, cfg.vllm, dtype=cfg.model.dtype, seed=cfg.seed + distributed.rank(),
                        max_model_len=cfg.data.max_prompt_tokens + max_new_tokens + 1)
    check = engine.check_sync(roles.policy, encode_prompts(tokenizer, probe_prompts[:8]))
    if check:
        stage_run.metrics["engine_sync_check"] = {"update": update, **check}
        log.info("vLLM engine holds the policy's weights of update %d: largest |log-prob difference| %.2g over "
                 "%d probe tokens", update, check["max_abs_logprob_diff"], check["tokens"])
    return engine
