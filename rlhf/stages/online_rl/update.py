"""One update of stage 3 from its rollout (loop.py samples the rollout; this learns from it):

    rewards     the reward source's score shaped (clipped; no_eos_score for an unfinished
                response; DAPO's overlong penalty), -beta * KL to the reference on every token
                (rlhf/algos/rewards.py; with ppo.kl_in_reward=false the KL goes into the loss
                instead, as GRPO does)
    advantages  the registered estimator `ppo.advantage` (gae: GAE, whitened over all ranks)
    weights     when another engine sampled (vLLM): its mismatch with the policy, and with
                ppo.tis_cap the truncated importance weights on the policy-gradient terms
    check       no nan/inf in scores, advantages, returns (nor later in a loss or gradient norm):
                else stop, or with ppo.skip_nonfinite skip (rlhf/core/nonfinite.py)
    optimise    ppo_epochs x minibatches of the registered `ppo.policy_loss` (+ vf_coef x the
                critic's clipped value loss, + ptx_coef x LM loss on demonstrations: PPO-ptx),
                each minibatch's gradients accumulated over micro-batches into one step;
                minibatches hold whole groups, and a micro-batch reads each group's prompt once
    statistics  what to watch together (score, KL, entropy, length, losses)

The tests and the benchmarks call `update` too, so what they measure is the loop's update.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Optional

import torch

from rlhf.algos.advantages import ADVANTAGES, AdvantageInput
from rlhf.algos.critic import explained_variance, value_loss
from rlhf.algos.kl import kl_per_token
from rlhf.algos.policy_loss import POLICY_LOSSES, aggregate, logprob_mismatch, truncated_is_weights
from rlhf.algos.rewards import overlong_penalty, shape_scores, token_rewards, uniform_groups
from rlhf.core import distributed
from rlhf.core.distributed import module_of
from rlhf.core.nonfinite import NonFiniteGuard
from rlhf.core.ops import masked_mean, masked_whiten, pad_right
from rlhf.sampling import response_logprobs
from rlhf.sampling.prefix import length_sorted, run_length
from rlhf.stages.online_rl.roles import LocalEngine, Roles, micro_rows
from rlhf.stages.online_rl.rollout import Rollout, token_values


def update(roles: Roles, r: Rollout, p, beta: float, *, max_new_tokens: Optional[int] = None,
           ptx_examples: list = (), pad_id: int = 0, train_policy: bool = True,
           guard: Optional[NonFiniteGuard] = None, where: str = "this update") -> Optional[dict[str, float]]:
    """Learns from rollout `r` (`p`: the ppo settings; `beta`: the KL coefficient now) and
    returns the update's statistics, or None when `guard` skipped it for a non-finite reward or
    advantage (nothing changed then). `max_new_tokens`: the generation limit (default the
    rollout's width), where DAPO's overlong penalty starts and Dr. GRPO's constant;
    `ptx_examples`: PPO-ptx's demonstrations; `train_policy`: false while only the critic warms up."""
    started = time.perf_counter()
    guard = guard or NonFiniteGuard(skip=False, setting="ppo.skip_nonfinite")
    max_new_tokens = max_new_tokens or r.mask.shape[1]
    scores = shape_scores(r.scores, r.ended, clip=p.score_clip, no_eos_score=p.no_eos_score)
    if p.overlong_buffer:  # DAPO: long answers lose score before they are cut off
        scores = scores + overlong_penalty(r.mask.sum(1), max_new_tokens, p.overlong_buffer, p.overlong_penalty)
    kl, advantages, returns = advantages_of(r, scores, p, beta)
    trained, dropped = r, {}
    if p.drop_uniform_groups:  # DAPO's dynamic sampling: a group that scored all alike teaches nothing
        uniform = uniform_groups(scores, r.groups)
        trained, dropped = dataclasses.replace(r, mask=r.mask * ~uniform[:, None]), {
            "groups_dropped_frac": uniform.float().mean().item()}
    engine_stats = {}
    if r.engine_logprobs is not None:
        engine_stats = logprob_mismatch(r.logprobs, r.engine_logprobs, r.mask)
        if p.tis_cap is not None:  # the policy-gradient terms reweighted for the engine's sampling
            weights = truncated_is_weights(r.logprobs, r.engine_logprobs, p.tis_cap)
            advantages = advantages * weights
            engine_stats["tis_capped_frac"] = masked_mean((weights >= p.tis_cap).float(), r.mask).item()
    # Before any optimisation: a nan reward or advantage reaches every weight.
    if not guard.finite(where, "this update", {"the reward": r.scores, "the shaped score": scores,
                                               "the advantage": advantages, "the return": returns}, rows=r.prompts):
        return None
    stats = optimise(roles, trained, advantages, returns, p, list(ptx_examples), pad_id, train_policy=train_policy,
                     guard=guard, where=where, horizon=max_new_tokens)
    stats.update(dropped)
    stats.update(rollout_stats(r, scores, kl, returns, p, beta), **engine_stats)
    stats["time_train_s"] = time.perf_counter() - started
    return stats


def advantages_of(r: Rollout, scores: torch.Tensor, p, beta: float):
    """(kl [B, R], advantages [B, R], returns [B, R] or None) from the registered estimator."""
    kl = kl_per_token(r.logprobs, r.ref_logprobs, p.kl_estimator) * r.mask
    rewards = token_rewards(kl, scores, r.mask, beta if p.kl_in_reward else 0.0)
    total = distributed.sum_over_ranks  # batch statistics over every rank's responses
    if p.whiten_rewards:
        rewards = masked_whiten(rewards, r.mask, shift_mean=False, total=total)
    advantages, returns = ADVANTAGES[p.advantage](
        AdvantageInput(rewards=rewards, scores=scores, values=r.values, mask=r.mask, groups=r.groups, total=total), p)
    return kl, advantages, returns


def optimise(roles: Roles, r: Rollout, advantages: torch.Tensor, returns: Optional[torch.Tensor], p,
             ptx_examples: list, pad_id: int, train_policy: bool = True, guard: Optional[NonFiniteGuard] = None,
             where: str = "this update", horizon: Optional[int] = None) -> dict[str, float]:
    """ppo_epochs passes over the rollout in shuffled minibatches; returns the mean losses.
    `guard` (default: stop on any) checks each loss before its backward and each gradient norm
    at its optimizer step; `where` names the update in its messages; `horizon` is Dr. GRPO's
    constant (ppo.loss_agg=seq_mean_token_sum_norm: the generation length, default the rollout's)."""
    horizon = horizon or r.mask.shape[1]
    guard = guard or NonFiniteGuard(skip=False, setting="ppo.skip_nonfinite")
    policy_loss = POLICY_LOSSES[p.policy_loss]
    sums: dict[str, float] = {}
    steps = 0
    group = run_length(r.groups.tolist())  # a group's rows stay together: a micro-batch reads their prompt once
    for epoch in range(p.ppo_epochs):
        for n, idx in enumerate(shuffled(len(r.mask), group).split(p.mini_batch_size // distributed.world_size())):
            at = f"{where}, epoch {epoch + 1}, mini-batch {n + 1}"
            step: dict[str, float] = {}
            tokens = r.mask[idx].sum().clamp(min=1)
            # Micro-batches accumulate gradients into one optimizer step: the same update as one
            # pass over the minibatch (each loss weighted by its share of the minibatch's
            # response tokens, so token means stay exact), with a fraction of the activations.
            # The engines step after every micro-batch and apply the update (clipped) on the last.
            if len(idx) > micro_rows(p):  # micro-batches of similar lengths: little padding to compute
                idx = idx[length_sorted(r.mask[idx].sum(1), run_length(r.groups[idx].tolist()))]
            micros = idx.split(micro_rows(p))
            dropped: set[str] = set()  # roles whose step of this minibatch a non-finite loss dropped
            for i, micro in enumerate(micros):
                seq, att, m = r.sequences[micro], r.attention_mask[micro], r.mask[micro]
                weight = m.sum() / tokens
                parts: dict[str, torch.Tensor] = {}
                if roles.critic is not None and "critic" not in dropped:
                    values = token_values(roles.critic, seq, att, r.prompt_len, group)
                    v_loss, v_clip = value_loss(values, r.values[micro], returns[micro], m, p.value_clip)
                    if checked_backward(roles.critic, weight * p.vf_coef * v_loss, guard, at, "the critic's loss"):
                        parts.update(value_loss=v_loss, value_clipfrac=v_clip)
                    else:
                        dropped.add("critic")
                if roles.critic is not None:
                    roles.critic.step()  # also when dropped: the engine counts micro-batches
                if train_policy and "policy" not in dropped:
                    logprobs, entropy = response_logprobs(roles.policy, seq, att, r.prompt_len, p.temperature,
                                                          with_entropy=p.entropy_coef != 0, n=group)
                    token_losses, pg_stats = policy_loss(logprobs, r.logprobs[micro], advantages[micro], m, p)
                    pg_loss = aggregate(token_losses, m, p.loss_agg, rows=len(idx), tokens=tokens, horizon=horizon)
                    loss = pg_loss
                    if p.kl_loss_coef > 0:  # KL to the reference in the loss, not the reward (GRPO)
                        kl_loss = masked_mean(kl_per_token(logprobs, r.ref_logprobs[micro], p.kl_estimator), m)
                        loss = loss + p.kl_loss_coef * kl_loss
                        pg_stats = {**pg_stats, "kl_loss": kl_loss.detach()}
                    if entropy is not None:
                        loss = loss - p.entropy_coef * masked_mean(entropy, m)
                    loss = weight * loss
                    ptx = None
                    if ptx_examples and i == len(micros) - 1:  # PPO-ptx, in the minibatch's last backward
                        chosen = random.sample(ptx_examples, min(p.ptx_batch_size, len(ptx_examples)))
                        ptx = ptx_loss(roles.policy, chosen, pad_id)
                        loss = loss + p.ptx_coef * ptx
                    if checked_backward(roles.policy, loss, guard, at, "the policy's loss"):
                        parts.update(policy_loss=pg_loss, **pg_stats)
                        if ptx is not None:
                            step["ptx_loss"] = ptx.item()
                    else:
                        dropped.add("policy")
                if train_policy:
                    roles.policy.step()
                for k, v in parts.items():
                    step[k] = step.get(k, 0.0) + (weight * v).item()
            # The engines have stepped (or not: LocalEngine and DeepSpeed's overflow check refuse
            # non-finite gradients); whether they met any decides between stopping and counting.
            for name, engine in (("critic", roles.critic), ("policy", roles.policy if train_policy else None)):
                if engine is not None and name not in dropped:
                    norm = engine.get_global_grad_norm()
                    guard.finite(at, "this mini-batch's step", {f"the {name}'s gradient norm": norm},
                                 cannot_skip=_cannot_skip(engine))
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
    return {k: v / steps for k, v in sums.items()}


def shuffled(rows: int, n: int) -> torch.Tensor:
    """A random order of the rows that keeps each run of n rows (a group) together, in order."""
    return (torch.randperm(rows // n)[:, None] * n + torch.arange(n)).flatten()


def checked_backward(engine, loss: torch.Tensor, guard: NonFiniteGuard, where: str, name: str) -> bool:
    """engine.backward(loss) when the loss is finite on every rank; else stops, or drops the
    engine's step of this minibatch (its gradients so far) and returns False."""
    if not guard.finite(where, "this mini-batch's step", {name: loss.detach()}, cannot_skip=_cannot_skip(engine)):
        engine.drop_step()
        return False
    engine.backward(loss, scale_wrt_gas=False)
    return True


def _cannot_skip(engine) -> Optional[str]:
    if isinstance(engine, LocalEngine):
        return None
    return ("under DeepSpeed a mini-batch's step cannot be skipped (the engine accumulates and applies its gradients "
            "itself); a non-finite reward or advantage still skips its update")


def ptx_loss(policy, examples: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Mean LM loss on demonstrations' response tokens (prompt ids, response ids), as SFT saw them."""
    input_ids, attention_mask = pad_right([p + r for p, r in examples], pad_id)
    labels, _ = pad_right([[-100] * len(p) + r for p, r in examples], -100)
    device = next(module_of(policy).parameters()).device
    return policy(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), labels=labels.to(device),
                  use_cache=False).loss


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
