"""Stage 3's rollout: prompts in, scored responses out.

Each prompt is answered `samples_per_prompt` times (the copies share a group id); every
response is sampled from the policy (temperature T, top_k 0, top_p 1) and cut after its first
EOS, keeping each token's log-prob as it is sampled (ppo.rollout_engine=vllm: sampled by a vLLM
engine holding the policy's weights, and the log-probs then taken by one forward pass of the
policy, the engine's kept beside them); then one forward pass each of the reference,
the critic (when there is one) and the reward source's models (a function reads the decoded
text), in chunks of micro-batch rows to bound the memory of the reference's logits. Turning
scores into rewards is the loop's business, not this.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import torch

from rlhf.algos.critic import explained_variance
from rlhf.config import RLHFConfig
from rlhf.core import distributed
from rlhf.core.artifacts import StageRun
from rlhf.core.distributed import full_weights, module_of
from rlhf.core.ops import masked_mean, positions
from rlhf.data import encode_prompts
from rlhf.models import unwrap
from rlhf.sampling import response_logprobs, sample
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
    # [B, R] the sampling engine's own log-probs when that is not the policy (vLLM), else None;
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


def token_values(critic, sequences, attention_mask, prompt_len: int) -> torch.Tensor:
    """The critic's value before each response token: the score head on every position's
    hidden state (a sequence classifier reads only the last one)."""
    model = unwrap(module_of(critic))  # with LoRA: the adapters stay active, the score head is peft's copy
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=sequences, attention_mask=attention_mask, position_ids=positions(attention_mask),
                      use_cache=False).last_hidden_state
    return model.score(hidden[:, prompt_len - 1:-1]).squeeze(-1).float()


@torch.no_grad()
def rollout(roles: Roles, tokenizer, prompt_ids: list[list[int]], p, max_new_tokens: int,
            groups: Optional[torch.Tensor] = None, min_new_tokens: int = 0, prompts: Optional[list] = None,
            engine=None) -> Rollout:
    """`prompt_ids` are formatted prompts (rlhf.data.encode_prompts), one row per response;
    `groups` their prompt ids (default: each its own); `prompts` the prompts themselves, which a
    reward function scores with the decoded responses (a reward model reads the tokens). min_new_tokens > 0
    holds EOS back until then (the throughput benchmark samples fixed-length responses).
    `engine`: a vLLM engine holding the policy's weights (rlhf.sampling.vllm_engine) to sample
    with; None samples from the policy itself."""
    roles.policy.eval()
    start = time.perf_counter()
    engine_logprobs = None
    if engine is None:
        with full_weights(roles.policy) as policy:  # ZeRO-3: gathered once per rollout, not per token
            device = next(policy.parameters()).device  # every tensor of the rollout lives there
            batch = tokenizer.pad({"input_ids": prompt_ids}, padding_side="left", return_tensors="pt").to(device)
            responses, logprobs, entropy = sample(policy, batch["input_ids"], batch["attention_mask"],
                                                  max_new_tokens=max_new_tokens, temperature=p.temperature,
                                                  eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                                                  min_new_tokens=min_new_tokens)
    else:
        device = distributed.device()
        batch = tokenizer.pad({"input_ids": prompt_ids}, padding_side="left", return_tensors="pt").to(device)
        # one seed per response, drawn from this rank's torch generator: reproducible, and resumed with it
        seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),)).tolist()
        responses, engine_logprobs = engine.sample(prompt_ids, max_new_tokens=max_new_tokens,
                                                   temperature=p.temperature, eos_id=tokenizer.eos_token_id,
                                                   pad_id=tokenizer.pad_token_id, min_new_tokens=min_new_tokens,
                                                   seeds=seeds, device=device)
    prompt_len = batch["input_ids"].shape[1]
    mask, ended = eos_mask(responses, tokenizer.eos_token_id)
    responses = torch.where(mask.bool(), responses, tokenizer.pad_token_id)  # tokens after EOS -> PAD
    sequences = torch.cat([batch["input_ids"], responses], 1)
    attention_mask = torch.cat([batch["attention_mask"], mask], 1)

    generated = time.perf_counter()

    parts: dict[str, list[torch.Tensor]] = {"ref": [], "values": [], "policy": [], "entropy": []}
    # (under ZeRO-3 each of these forward passes is a collective: every rank runs as many chunks)
    for rows in torch.arange(len(sequences)).split(micro_rows(p)):
        seq, att = sequences[rows], attention_mask[rows]
        if engine is not None:  # the PPO ratio's old log-probs from the policy itself, not the engine's numerics
            policy_logprobs, policy_entropy = response_logprobs(roles.policy, seq, att, prompt_len, p.temperature,
                                                                with_entropy=True)
            parts["policy"].append(policy_logprobs.float())
            parts["entropy"].append(policy_entropy.float())
        parts["ref"].append(response_logprobs(roles.ref, seq, att, prompt_len, p.temperature)[0])
        if roles.critic is not None:
            parts["values"].append(token_values(roles.critic, seq, att, prompt_len))
    if engine is not None:
        logprobs, entropy, engine_logprobs = torch.cat(parts["policy"]), torch.cat(parts["entropy"]), engine_logprobs * mask
    logprobs, entropy = logprobs * mask, entropy * mask
    ref_logprobs = torch.cat(parts["ref"]).float()
    values = torch.cat(parts["values"]).float() * mask if parts["values"] else None
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    scores = roles.reward.score_sequences(sequences, attention_mask, prompts, texts, micro_rows(p)).float().to(device)
    roles.policy.train()
    seconds = {"generate": generated - start, "score": time.perf_counter() - generated}
    return Rollout(sequences, attention_mask, mask.float(), logprobs, ref_logprobs, values, scores, ended, entropy,
                   (groups if groups is not None else torch.arange(len(sequences))).to(device), texts, seconds,
                   engine_logprobs)


def start_engine(cfg: RLHFConfig, roles: Roles, tokenizer, probe_prompts: list, max_new_tokens: int,
                 stage_run: StageRun, update: int):
    """ppo.rollout_engine=vllm: the vLLM engine, holding the policy's weights as they are now (at
    the start, or as a resumed checkpoint left them), checked against the policy on the probe
    prompts: the largest |log-prob difference| goes to the log and to the manifest's metrics
    (`engine_sync_check`). None for the hf engine."""
    if cfg.ppo.rollout_engine != "vllm":
        return None
    from rlhf.sampling.vllm_engine import VLLMEngine

    engine = VLLMEngine(roles.policy, cfg.vllm, dtype=cfg.model.dtype, seed=cfg.seed + distributed.rank(),
                        max_model_len=cfg.data.max_prompt_tokens + max_new_tokens + 1)
    probe = [ids for ids in encode_prompts(tokenizer, probe_prompts[:8]) if len(ids) > 1]
    if probe:
        engine_side = engine.sequence_logprobs(probe)
        padded = tokenizer.pad({"input_ids": probe}, padding_side="right", return_tensors="pt")
        device = distributed.device()
        with torch.no_grad():
            policy_side, _ = response_logprobs(roles.policy, padded["input_ids"].to(device),
                                               padded["attention_mask"].to(device), 1, 1.0)
        diff = max((policy_side[i, :len(e)].cpu() - e).abs().max().item() for i, e in enumerate(engine_side))
        stage_run.metrics["engine_sync_check"] = {"update": update, "max_abs_logprob_diff": diff,
                                                  "tokens": sum(len(e) for e in engine_side)}
        log.info("vLLM engine holds the policy's weights of update %d: largest |log-prob difference| %.2g over "
                 "%d probe tokens", update, diff, sum(len(e) for e in engine_side))
    return engine


def rollout_stats(r: Rollout, scores: torch.Tensor, kl: torch.Tensor, returns: Optional[torch.Tensor], p,
                  beta: float) -> dict[str, float]:
    """What to watch together: score up with length up and KL running away is reward hacking."""
    beta = beta if p.kl_in_reward else 0.0  # the KL penalty's share of the reward
    stats = {
        "score": scores.mean().item(),
        "score_raw": r.scores.mean().item(),  # the reward source's, before the no-EOS score and clipping
        "kl": kl.sum(1).mean().item(),  # per sequence, nats
        "non_score_reward": (-beta * kl).sum(1).mean().item(),
        "entropy": masked_mean(r.entropy, r.mask).item(),
        "response_length": r.mask.sum(1).mean().item(),
        "eos_rate": r.ended.float().mean().item(),
    }
    if r.values is not None and returns is not None:
        stats["explained_variance"] = explained_variance(r.values, returns, r.mask).item()
    return stats
