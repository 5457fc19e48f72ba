"""Stage 3, `rlhf stage=ppo`: PPO against the reward model, InstructGPT's objective.

    for each update:
        rollout   sample one response per prompt from the policy (temperature T, top_k 0,
                  top_p 1), cut after the first EOS, keeping each token's log-prob as it is
                  sampled; one forward each of reference, value and reward model (in chunks of
                  micro_batch_size rows, to bound the memory of the reference's logits)
        rewards   -beta * KL per token, + the normalised RM score on the last token (a fixed
                  `no_eos_score` for responses that never ended)
        advantages GAE (gamma, lambda), whitened over the batch; returns = advantages + values
        optimise  ppo_epochs x minibatches of clipped surrogate + vf_coef x clipped value loss
                  (+ ptx_coef x LM loss on demonstrations: PPO-ptx), each minibatch's gradients
                  accumulated over micro-batches into one optimizer step

trl 1.16 has no PPO trainer (removed in 1.13), so this one is ours. The four roles are built in
rlhf/ppo/engines.py, with or without DeepSpeed; this loop is the same either way. With several
ranks each samples its share of rollout_batch_size, and advantages are whitened over all of them.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf import distributed
from rlhf.artifacts import StageRun, save_final
from rlhf.config import ConfigError, RLHFConfig
from rlhf.data import describe_source, encode_prompts, encode_responses, load_data
from rlhf.distributed import full_weights, is_main_process, module_of
from rlhf.generation import gold_evaluation, positions, response_logprobs, reward_bias, sample
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer, unwrap
from rlhf.ppo import losses as L
from rlhf.ppo.checkpoint import load_latest, save_checkpoint
from rlhf.ppo.engines import Roles, build_roles
from rlhf.preemption import stop_request
from rlhf.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    sequences: torch.Tensor  # [B, P + R] left-padded prompt, then the response, then padding
    attention_mask: torch.Tensor  # [B, P + R]
    mask: torch.Tensor  # [B, R] 1 on response tokens up to and including the first EOS
    logprobs: torch.Tensor  # [B, R] under the policy that sampled them (logits / T)
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # [B] normalised RM score (or no_eos_score)
    raw_scores: torch.Tensor  # [B] RM score before normalisation and the no-EOS rule
    ended: torch.Tensor  # [B] bool: the response emitted EOS
    entropy: torch.Tensor  # [B, R]
    texts: list[str]  # decoded responses
    seconds: dict[str, float]  # wall time of this rollout's phases: generate, score


def token_values(value_model, sequences, attention_mask, prompt_len: int) -> torch.Tensor:
    """The critic's value before each response token: the score head on every position's
    hidden state (a sequence classifier reads only the last one)."""
    model = unwrap(module_of(value_model))  # with LoRA: the adapters stay active, the score head is peft's copy
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=sequences, attention_mask=attention_mask,
                      position_ids=positions(attention_mask)).last_hidden_state
    return model.score(hidden[:, prompt_len - 1:-1]).squeeze(-1).float()


def eos_mask(responses: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is 1 up to and including the first EOS (all ones if none)."""
    is_eos = responses == eos_id
    ended = is_eos.any(1)
    first = torch.where(ended, is_eos.float().argmax(1), torch.full_like(ended, responses.shape[1], dtype=torch.long))
    idx = torch.arange(responses.shape[1], device=responses.device)
    return (idx[None, :] <= first[:, None]).long(), ended


@torch.no_grad()
def rollout(roles: Roles, tokenizer, prompt_ids: list[list[int]], p, max_new_tokens: int,
            min_new_tokens: int = 0) -> Rollout:
    """`prompt_ids` are formatted prompts (rlhf.data.encode_prompts). min_new_tokens > 0 holds
    EOS back until then (the throughput benchmark samples fixed-length responses)."""
    roles.policy.eval()
    start = time.perf_counter()
    batch = tokenizer.pad({"input_ids": prompt_ids}, padding_side="left", return_tensors="pt")
    prompt_len = batch["input_ids"].shape[1]
    with full_weights(roles.policy) as policy:  # ZeRO-3: gathered once per rollout, not per token
        responses, logprobs, entropy = sample(policy, batch["input_ids"], batch["attention_mask"],
                                              max_new_tokens=max_new_tokens, temperature=p.temperature,
                                              eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                                              min_new_tokens=min_new_tokens)
    mask, ended = eos_mask(responses, tokenizer.eos_token_id)
    responses = torch.where(mask.bool(), responses, tokenizer.pad_token_id)  # tokens after EOS -> PAD
    logprobs, entropy = logprobs * mask, entropy * mask
    sequences = torch.cat([batch["input_ids"], responses], 1)
    attention_mask = torch.cat([batch["attention_mask"], mask], 1)

    generated = time.perf_counter()

    parts: dict[str, list[torch.Tensor]] = {"ref": [], "values": [], "raw": []}
    # (under ZeRO-3 each of these forward passes is a collective: every rank runs as many chunks)
    for rows in torch.arange(len(sequences)).split(micro_rows(p)):
        seq, att = sequences[rows], attention_mask[rows]
        parts["ref"].append(response_logprobs(roles.ref, seq, att, prompt_len, p.temperature)[0])
        parts["values"].append(token_values(roles.value, seq, att, prompt_len))
        # The RM reads the last non-pad token: the EOS of an ended response.
        parts["raw"].append(roles.reward(input_ids=seq, attention_mask=att, position_ids=positions(att)).logits[:, 0])
    ref_logprobs, values, raw = (torch.cat(parts[k]).float() for k in ("ref", "values", "raw"))
    scores = raw + reward_bias(module_of(roles.reward))
    if p.score_clip is not None:
        scores = scores.clamp(-p.score_clip, p.score_clip)
    scores = torch.where(ended, scores, torch.full_like(scores, p.no_eos_score))
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    roles.policy.train()
    seconds = {"generate": generated - start, "score": time.perf_counter() - generated}
    return Rollout(sequences, attention_mask, mask.float(), logprobs, ref_logprobs, values * mask, scores, raw,
                   ended, entropy, texts, seconds)


def micro_rows(p) -> int:
    """Rows per forward/backward pass on each rank."""
    return p.micro_batch_size or p.mini_batch_size // distributed.world_size()


def check_batch_sizes(p) -> None:
    """Batch sizes count episodes across all ranks; each rank needs whole shares of them."""
    world = distributed.world_size()
    if p.rollout_batch_size % world or p.mini_batch_size % world or (p.mini_batch_size // world) % micro_rows(p):
        raise ConfigError(f"with {world} ranks, ppo.rollout_batch_size={p.rollout_batch_size} and "
                          f"ppo.mini_batch_size={p.mini_batch_size} must be divisible by {world}, and each rank's "
                          f"share of a minibatch ({p.mini_batch_size // world}) by ppo.micro_batch_size="
                          f"{p.micro_batch_size}; change one of them")


def run(cfg: RLHFConfig, run: StageRun) -> None:
    p = cfg.ppo
    check_batch_sizes(p)
    policy_from = p.policy_from or str(cfg.run_dir / "sft" / "final")
    reward_from = p.reward_from or str(cfg.run_dir / "rm" / "final")
    value_from = p.value_from or reward_from
    for name, path, stage in (("policy_from", policy_from, "sft"), ("reward_from", reward_from, "rm")):
        if getattr(p, name) is None and not Path(path).exists():
            raise ConfigError(f"ppo.{name} is null, so PPO reads {path}, which does not exist: run "
                              f"`rlhf stage={stage} run={cfg.run}` first, or set ppo.{name}=<folder or hub id>")
    max_new_tokens = p.max_new_tokens or cfg.data.max_response_tokens
    torch.manual_seed(cfg.seed + distributed.rank())  # ranks draw different samples
    random.seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(cfg.data, tokenizer)
    train_prompts = [x.prompt for x in bundle.require("ppo", "prompts")]
    eval_prompts = [x.prompt for x in bundle.require("eval", "prompts")][: p.eval_prompts]
    demos = bundle.require("sft", "demonstrations") if p.ptx_coef > 0 else []
    run.manifest["inputs"] = {"data": describe_source(cfg.data), "policy_from": policy_from,
                              "reward_from": reward_from, "value_from": value_from}
    run.manifest["data"] = bundle.summary()

    ds_config = cfg.deepspeed.config if cfg.deepspeed.name != "none" else {}
    # Dropout off in all four roles: it would make the sampling policy and the one being
    # optimised differ, and the PPO ratio would no longer start at 1.
    with distributed.sharded_loading(ds_config, policy_from, cfg.model.dtype, cfg.model.trust_remote_code):
        roles = build_roles(cfg, policy=load_causal_lm(cfg.model, tokenizer, policy_from),
                            value=load_reward_model(cfg.model, tokenizer, value_from),
                            reward=load_reward_model(cfg.model, tokenizer, reward_from),
                            ref=None if cfg.model.lora.enabled else load_causal_lm(cfg.model, tokenizer, policy_from))
    kl_ctl = L.KLController(p.beta, p.kl_target, p.kl_horizon)
    policy_module = module_of(roles.policy)
    ema = {k: v.detach().clone() for k, v in policy_module.state_dict().items()} if p.ema_decay else None
    state = {"update": 0, "position": 0, "epoch_seed": cfg.seed}
    resumed = load_latest(cfg.stage_dir / "checkpoints", roles, kl_ctl, state)
    if resumed:
        log.info("resumed from %s at update %d", resumed, state["update"])
    tracker = Tracker(cfg.logger, cfg.stage_dir, "ppo")
    stop = stop_request()

    def evaluate(step: int) -> dict:
        if bundle.gold_scorer is None:
            return {}
        # Every rank evaluates all prompts (same seed, same result): simpler than sharing them out.
        with full_weights(roles.policy) as policy:
            metrics = gold_evaluation(policy, tokenizer, eval_prompts, bundle.gold_scorer,
                                      max_new_tokens=max_new_tokens, seed=cfg.seed)
        tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        return metrics

    if state["update"] == 0:
        run.metrics.update({f"start_{k}": v for k, v in evaluate(0).items()})
    from tqdm.auto import tqdm

    progress = tqdm(range(state["update"], p.updates), desc="ppo", disable=not is_main_process(),
                    initial=state["update"], total=p.updates)
    for update in progress:
        # the next rollout_batch_size prompts of a reshuffled pass over the ppo split
        prompts, order = [], None
        while len(prompts) < p.rollout_batch_size:
            if order is None:  # the pass's order follows from its seed alone: a resumed run finds its place
                order = list(range(len(train_prompts)))
                random.Random(state["epoch_seed"]).shuffle(order)
            prompts.append(train_prompts[order[state["position"]]])
            state["position"] = (state["position"] + 1) % len(order)
            if state["position"] == 0:
                state["epoch_seed"], order = state["epoch_seed"] + 1, None
        prompts = prompts[distributed.rank()::distributed.world_size()]  # this rank's share
        r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens)
        started = time.perf_counter()
        stats = optimise(roles, r, p, kl_ctl.beta, tokenizer, demos, train_policy=update >= p.critic_warmup_updates)
        stats.update({f"time_{k}_s": v for k, v in r.seconds.items()}, time_train_s=time.perf_counter() - started)
        if bundle.gold_scorer is not None:
            stats["gold_score"] = sum(bundle.gold_scorer(q, t) for q, t in zip(prompts, r.texts)) / len(r.texts)
        stats = distributed.mean_over_ranks(stats)
        kl_ctl.update(stats["kl"], p.rollout_batch_size)
        if ema is not None:
            with torch.no_grad():
                for k, v in policy_module.state_dict().items():
                    ema[k].mul_(p.ema_decay).add_(v.detach(), alpha=1 - p.ema_decay)
        stats["beta"] = kl_ctl.beta
        tracker.log(stats, update + 1)
        progress.set_postfix(score=f"{stats['score']:.2f}", kl=f"{stats['kl']:.2f}",
                             gold=f"{stats.get('gold_score', float('nan')):.3f}")
        state["update"] = update + 1
        if p.eval_every_updates and state["update"] % p.eval_every_updates == 0 and state["update"] < p.updates:
            evaluate(state["update"])
        if stop.requested():  # SIGTERM / SIGUSR1: checkpoint this update, then exit
            stop.stop(str(save_checkpoint(cfg.stage_dir / "checkpoints", roles, kl_ctl, state)))
        if p.save_every_updates and state["update"] % p.save_every_updates == 0:
            save_checkpoint(cfg.stage_dir / "checkpoints", roles, kl_ctl, state)
        run.metrics["last_update"] = stats

    if ema is not None:
        policy_module.load_state_dict(ema)
    run.metrics.update({f"final_{k}": v for k, v in evaluate(p.updates).items()})
    run.metrics["updates"] = state["update"]
    tracker.close()
    save_checkpoint(cfg.stage_dir / "checkpoints", roles, kl_ctl, state)
    run.manifest["distributed"] = {role: distributed.describe(getattr(roles, role), cfg)
                                   for role in ("policy", "value", "ref", "reward")}
    save_final(roles.policy, tokenizer, cfg.stage_dir / "final")
    log.info("PPO done: %s", {k: v for k, v in run.metrics.items() if k != "last_update"})
    log.info("final policy: %s", cfg.stage_dir / "final")


def optimise(roles: Roles, r: Rollout, p, beta: float, tokenizer, demos, train_policy: bool) -> dict[str, float]:
    prompt_len = r.sequences.shape[1] - r.mask.shape[1]
    kl = L.kl_per_token(r.logprobs, r.ref_logprobs, p.kl_estimator) * r.mask
    rewards = L.token_rewards(kl, r.scores, r.mask, beta)
    total = distributed.sum_over_ranks  # whitening statistics over every rank's episodes
    if p.whiten_rewards:
        rewards = L.masked_whiten(rewards, r.mask, shift_mean=False, total=total)
    advantages, returns = L.gae(rewards, r.values, r.mask, p.gamma, p.lam)
    advantages = L.masked_whiten(advantages, r.mask, total=total)

    sums: dict[str, float] = {}
    steps = 0
    for _ in range(p.ppo_epochs):
        for idx in torch.randperm(len(r.scores)).split(p.mini_batch_size // distributed.world_size()):
            step: dict[str, float] = {}
            tokens = r.mask[idx].sum().clamp(min=1)
            # Micro-batches accumulate gradients into one optimizer step: the same update as one
            # pass over the minibatch (each loss weighted by its share of the minibatch's
            # response tokens, so token means stay exact), with a fraction of the activations.
            # The engines step after every micro-batch and apply the update (clipped) on the last.
            micros = idx.split(micro_rows(p))
            for i, micro in enumerate(micros):
                seq, att, m = r.sequences[micro], r.attention_mask[micro], r.mask[micro]
                weight = m.sum() / tokens
                values = token_values(roles.value, seq, att, prompt_len)
                v_loss, v_clip = L.value_loss(values, r.values[micro], returns[micro], m, p.value_clip)
                roles.value.backward(weight * p.vf_coef * v_loss, scale_wrt_gas=False)
                roles.value.step()
                parts = {"value_loss": v_loss, "value_clipfrac": v_clip}
                if train_policy:
                    logprobs, entropy = response_logprobs(roles.policy, seq, att, prompt_len, p.temperature,
                                                          with_entropy=p.entropy_coef > 0)
                    pg_loss, pg_clip, approx_kl = L.policy_loss(logprobs, r.logprobs[micro], advantages[micro], m,
                                                                p.clip)
                    loss = pg_loss
                    if entropy is not None:
                        loss = loss - p.entropy_coef * L.masked_mean(entropy, m)
                    loss = weight * loss
                    if demos and i == len(micros) - 1:  # PPO-ptx, in the minibatch's last backward
                        ptx = ptx_loss(roles.policy, tokenizer, random.sample(demos, min(p.ptx_batch_size, len(demos))))
                        loss = loss + p.ptx_coef * ptx
                        step["ptx_loss"] = ptx.item()
                    roles.policy.backward(loss, scale_wrt_gas=False)
                    roles.policy.step()
                    parts.update(policy_loss=pg_loss, policy_clipfrac=pg_clip, approx_kl=approx_kl)
                for k, v in parts.items():
                    step[k] = step.get(k, 0.0) + (weight * v).item()
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
    stats = {k: v / steps for k, v in sums.items()}
    lengths = r.mask.sum(1)
    stats.update({
        "score": r.scores.mean().item(),
        "score_raw": r.raw_scores.mean().item(),
        "kl": (kl.sum(1)).mean().item(),  # per sequence, nats
        "non_score_reward": (-beta * kl).sum(1).mean().item(),
        "entropy": L.masked_mean(r.entropy, r.mask).item(),
        "response_length": lengths.mean().item(),
        "eos_rate": r.ended.float().mean().item(),
        "explained_variance": L.explained_variance(r.values, returns, r.mask).item(),
    })
    return stats


def ptx_loss(policy, tokenizer, demos) -> torch.Tensor:
    """Mean LM loss on demonstrations' response tokens, formatted as SFT saw them."""
    prompts = encode_prompts(tokenizer, [d.prompt for d in demos])
    responses = encode_responses(tokenizer, [d.response for d in demos])
    rows = [p + r for p, r in zip(prompts, responses)]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention_mask = torch.zeros_like(input_ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p): len(p) + len(r)] = torch.tensor(r)
        attention_mask[i, : len(p) + len(r)] = 1
    return policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
