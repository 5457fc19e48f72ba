"""Stage 3, `rlhf stage=ppo`: online RL against the reward model (InstructGPT's objective).

    for each update:
        prompts     the next rollout_batch_size / samples_per_prompt prompts of the ppo split
        rollout     samples_per_prompt responses each, with reference log-probs, the critic's
                    values (when there is one) and the reward source's scores (rollout.py; the
                    source: reward=model|function|ensemble, rlhf/sampling/reward.py); sampled by
                    the policy, or by a vLLM engine holding its weights (ppo.rollout_engine=vllm:
                    its mismatch with the policy logged, optionally corrected by ppo.tis_cap)
        rewards     the normalised score on the last token (no_eos_score for an unfinished
                    response), -beta * KL to the reference on every token (rlhf/algos/rewards.py;
                    with ppo.kl_in_reward=false the KL goes into the loss instead, as GRPO does)
        advantages  the registered estimator `ppo.advantage` (gae: GAE, whitened over all ranks)
        check       no nan/inf in scores, advantages, returns (nor later in a loss or gradient norm):
                    else stop, or with ppo.skip_nonfinite skip (rlhf/core/nonfinite.py)
        optimise    ppo_epochs x minibatches of the registered `ppo.policy_loss` (+ vf_coef x the
                    critic's clipped value loss, + ptx_coef x LM loss on demonstrations: PPO-ptx),
                    each minibatch's gradients accumulated over micro-batches into one step
        sync        (vllm) the updated weights pushed into the engine
        log, evaluate, checkpoint

PPO is the default set of pieces (conf/algo/ppo.yaml): a critic, `gae`, `ppo_clip`. trl 1.16 has
no PPO trainer (removed in 1.13), so this loop is ours. The roles are built in roles.py, with or
without DeepSpeed; the loop is the same either way. With several ranks each samples its share
of the prompts (whole groups), and statistics that need the whole batch are taken over all ranks.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Optional

import torch

from rlhf.algos.advantages import ADVANTAGES, AdvantageInput, needs_critic
from rlhf.algos.critic import value_loss
from rlhf.algos.kl import KLController, kl_per_token
from rlhf.algos.policy_loss import POLICY_LOSSES, aggregate, logprob_mismatch, truncated_is_weights
from rlhf.algos.rewards import overlong_penalty, shape_scores, token_rewards, uniform_groups
from rlhf.config import ConfigError, RLHFConfig
from rlhf.core import distributed
from rlhf.core.artifacts import StageRun, save_final
from rlhf.core.distributed import full_weights, is_main_process, module_of
from rlhf.core.nonfinite import NonFiniteGuard
from rlhf.core.ops import masked_mean, masked_whiten, pad_right
from rlhf.core.preemption import stop_request
from rlhf.core.tracking import Tracker
from rlhf.data import describe_source, encode_prompts, encode_responses, load_data
from rlhf.data.stream import Stream
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.sampling import build_reward, gold_evaluation, response_logprobs
from rlhf.stages import resolve_inputs, reward_models
from rlhf.stages.online_rl.checkpoint import load_latest, save_checkpoint
from rlhf.stages.online_rl.roles import LocalEngine, Roles, build_roles, micro_rows
from rlhf.stages.online_rl.rollout import Rollout, rollout, rollout_stats, start_engine, token_values

log = logging.getLogger(__name__)


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    p = cfg.ppo
    check_batch_sizes(p)
    inputs = {**resolve_inputs(cfg, "ppo"), **reward_models(cfg)}
    max_new_tokens = p.max_new_tokens or cfg.data.max_response_tokens
    torch.manual_seed(cfg.seed + distributed.rank())  # ranks draw different samples
    random.seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.model)
    data = load_data(cfg.data, tokenizer)
    prompts = Stream([x.prompt for x in data.require("ppo", "prompts", "ppo")], seed=cfg.seed)
    eval_prompts = [x.prompt for x in data.require("eval", "prompts", "ppo")][: p.eval_prompts]
    ptx_examples = encode_demonstrations(tokenizer, data.require("sft", "demonstrations", "ppo")) if p.ptx_coef > 0 else []
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data), **inputs}
    stage_run.manifest["data"] = data.summary()

    roles = load_roles(cfg, tokenizer, inputs, data.gold_scorer)
    # what compare labels this policy by: the algorithm and the reward it was trained against
    stage_run.manifest["method"] = {"algorithm": algorithm_name(p), "reward": roles.reward.describe(),
                                    "label": method_label(p, roles.reward)}
    kl_ctl = KLController(p.beta, p.kl_target, p.kl_horizon)
    ema = EMA(module_of(roles.policy), p.ema_decay) if p.ema_decay else None
    start = 0
    evals: list[dict] = []  # every evaluation so far: the manifest's curve (compare plots gold vs sqrt(KL))
    resumed = load_latest(cfg.stage_dir / "checkpoints", roles)
    if resumed:
        path, saved = resumed
        start = saved["update"]
        kl_ctl.load_state_dict(saved["kl"])
        prompts.load_state_dict(saved["prompts"])
        evals = list(saved.get("evals", []))
        log.info("resumed from %s at update %d", path, start)
    engine = start_engine(cfg, roles, tokenizer, eval_prompts, max_new_tokens, stage_run, start)
    tracker = Tracker(cfg.logger, cfg.stage_dir, "ppo")
    stop = stop_request()
    guard = NonFiniteGuard(p.skip_nonfinite, "ppo.skip_nonfinite")

    def checkpoint(update: int):
        return save_checkpoint(cfg.stage_dir / "checkpoints", roles, update,
                               {"kl": kl_ctl.state_dict(), "prompts": prompts.state_dict(), "evals": evals})

    def evaluate(step: int) -> dict:
        metrics = evaluate_policy(roles, tokenizer, eval_prompts, data.gold_scorer, max_new_tokens, cfg.seed)
        tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        if metrics:
            evals.append({"update": step, **metrics})
            stage_run.metrics["evals"] = evals
        return metrics

    if start == 0:
        stage_run.metrics.update({f"start_{k}": v for k, v in evaluate(0).items()})
    from tqdm.auto import tqdm

    progress = tqdm(range(start, p.updates), desc="ppo", disable=not is_main_process(), initial=start,
                    total=p.updates)
    for update in progress:
        batch_prompts, groups = next_prompts(prompts, p)
        r = rollout(roles, tokenizer, encode_prompts(tokenizer, batch_prompts), p, max_new_tokens, groups,
                    prompts=batch_prompts, engine=engine)
        started = time.perf_counter()
        scores = shape_scores(r.scores, r.ended, clip=p.score_clip, no_eos_score=p.no_eos_score)
        if p.overlong_buffer:  # DAPO: long answers lose score before they are cut off
            scores = scores + overlong_penalty(r.mask.sum(1), max_new_tokens, p.overlong_buffer, p.overlong_penalty)
        kl, advantages, returns = advantages_of(r, scores, p, kl_ctl.beta)
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
        # Before any optimisation of this update: a nan reward or advantage reaches every weight.
        # (A skipped update saves no checkpoint: nothing changed since the last one.)
        if not guard.finite(f"update {update + 1}", "this update",
                            {"the reward": r.scores, "the shaped score": scores, "the advantage": advantages,
                             "the return": returns}, rows=batch_prompts):
            stage_run.metrics["nonfinite_skipped"] = guard.skipped
            continue
        stats = optimise(roles, trained, advantages, returns, p, ptx_examples, tokenizer.pad_token_id,
                         train_policy=roles.critic is None or update >= p.critic_warmup_updates,
                         guard=guard, where=f"update {update + 1}", horizon=max_new_tokens)
        stats.update(dropped)
        if p.skip_nonfinite:
            stats["nonfinite_skipped"] = stage_run.metrics["nonfinite_skipped"] = guard.skipped
        stats.update(rollout_stats(r, scores, kl, returns, p, kl_ctl.beta), **engine_stats)
        stats.update({f"time_{k}_s": v for k, v in r.seconds.items()}, time_train_s=time.perf_counter() - started)
        if engine is not None:  # the engine samples the next rollout from the weights just updated
            stats["time_sync_s"] = engine.sync(roles.policy)
        if data.gold_scorer is not None:
            stats["gold_score"] = sum(data.gold_scorer(q, t) for q, t in zip(batch_prompts, r.texts)) / len(r.texts)
        stats = distributed.mean_over_ranks(stats)

        kl_ctl.update(stats["kl"], p.rollout_batch_size)
        if ema is not None:
            ema.update()
        stats["beta"] = kl_ctl.beta
        tracker.log(stats, update + 1)
        progress.set_postfix(score=f"{stats['score']:.2f}", kl=f"{stats['kl']:.2f}",
                             gold=f"{stats.get('gold_score', float('nan')):.3f}")
        stage_run.metrics["last_update"] = stats
        done = update + 1
        if p.eval_every_updates and done % p.eval_every_updates == 0 and done < p.updates:
            evaluate(done)
        if stop.requested():  # SIGTERM / SIGUSR1: checkpoint this update, then exit
            stop.stop(str(checkpoint(done)))
        if p.save_every_updates and done % p.save_every_updates == 0:
            checkpoint(done)

    if ema is not None:
        ema.apply()
    stage_run.metrics.update({f"final_{k}": v for k, v in evaluate(p.updates).items()})
    stage_run.metrics["updates"] = p.updates
    tracker.close()
    checkpoint(p.updates)
    stage_run.manifest["distributed"] = {role: distributed.describe(model, cfg) for role, model in roles.models().items()}
    if not roles.reward.models():  # a function alone
        stage_run.manifest["distributed"]["reward"] = roles.reward.describe()
    save_final(roles.policy, tokenizer, cfg.stage_dir / "final")
    log.info("stage 3 (%s) done: %s", p.advantage,
             {k: v for k, v in stage_run.metrics.items() if k not in ("last_update", "evals")})
    log.info("final policy: %s", cfg.stage_dir / "final")


# ---- set-up ----

def check_batch_sizes(p) -> None:
    """Batch sizes count responses across all ranks; each rank needs whole groups of them, and
    whole shares of a minibatch."""
    world = distributed.world_size()
    prompts_per_update = p.rollout_batch_size // p.samples_per_prompt
    if prompts_per_update % world or p.mini_batch_size % world or (p.mini_batch_size // world) % micro_rows(p):
        raise ConfigError(f"with {world} ranks, the prompts of an update (ppo.rollout_batch_size="
                          f"{p.rollout_batch_size} / ppo.samples_per_prompt={p.samples_per_prompt}) and "
                          f"ppo.mini_batch_size={p.mini_batch_size} must be divisible by {world}, and each rank's "
                          f"share of a minibatch ({p.mini_batch_size // world}) by ppo.micro_batch_size="
                          f"{p.micro_batch_size}; change one of them")


def load_roles(cfg: RLHFConfig, tokenizer, inputs: dict[str, str], gold=None) -> Roles:
    """Policy, critic (when the advantage estimator uses one), reward model (or function) and
    reference.
    Dropout is off in all of them: it would make the sampling policy and the one being optimised
    differ, and the PPO ratio would no longer start at 1."""
    ds_config = cfg.deepspeed.config if cfg.deepspeed.name != "none" else {}
    with distributed.sharded_loading(ds_config, inputs["policy_from"], cfg.model.dtype, cfg.model.trust_remote_code):
        # (keyword order is load order)
        return build_roles(cfg, policy=load_causal_lm(cfg.model, tokenizer, inputs["policy_from"]),
                           critic=(load_reward_model(cfg.model, tokenizer, inputs["value_from"])
                                   if needs_critic(cfg.ppo.advantage) else None),
                           reward=build_reward(cfg.reward, lambda path: load_reward_model(cfg.model, tokenizer, path),
                                               tokenizer, inputs, gold),
                           ref=None if cfg.model.lora.enabled else load_causal_lm(cfg.model, tokenizer,
                                                                                  inputs["policy_from"]))


def algorithm_name(p) -> str:
    """The method's usual name: PPO for GAE with a critic, else the advantage estimator's."""
    return "ppo" if p.advantage == "gae" else p.advantage


def method_label(p, reward) -> str:
    """e.g. "grpo, RM", "ppo, ensemble of 4 (mean - 1.0 std)", "rloo, rlhf.data.toy:gold_score",
    "grpo, verifier (strict, all)": the algorithm and the reward source's label."""
    return f"{algorithm_name(p)}, {reward.label()}"


def encode_demonstrations(tokenizer, demos) -> list[tuple[list[int], list[int]]]:
    """PPO-ptx's examples, tokenized once as SFT saw them: (prompt ids, response ids)."""
    return list(zip(encode_prompts(tokenizer, [d.prompt for d in demos]),
                    encode_responses(tokenizer, [d.response for d in demos])))


def next_prompts(stream: Stream, p) -> tuple[list, torch.Tensor]:
    """This rank's prompts of the next update, each repeated samples_per_prompt times, and the
    group id (the prompt's index in the update) of every copy."""
    drawn = stream.take(p.rollout_batch_size // p.samples_per_prompt)
    mine = range(distributed.rank(), len(drawn), distributed.world_size())
    groups = [i for i in mine for _ in range(p.samples_per_prompt)]
    return [drawn[i] for i in groups], torch.tensor(groups)


def evaluate_policy(roles: Roles, tokenizer, prompts, gold_scorer, max_new_tokens: int, seed: int) -> dict:
    if gold_scorer is None:
        return {}
    # Every rank evaluates all prompts (same seed, same result): simpler than sharing them out.
    with full_weights(roles.policy) as policy:
        return gold_evaluation(policy, tokenizer, prompts, gold_scorer, max_new_tokens=max_new_tokens, seed=seed,
                               reference=roles.ref)


class EMA:
    """An exponential moving average of the policy's weights (InstructGPT: 0.992), saved as the
    final policy in place of the last weights."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay = module, decay
        self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        for k, v in self.module.state_dict().items():
            self.weights[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)

    def apply(self) -> None:
        self.module.load_state_dict(self.weights)


# ---- the algorithm ----

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
    for epoch in range(p.ppo_epochs):
        for n, idx in enumerate(torch.randperm(len(r.mask)).split(p.mini_batch_size // distributed.world_size())):
            at = f"{where}, epoch {epoch + 1}, mini-batch {n + 1}"
            step: dict[str, float] = {}
            tokens = r.mask[idx].sum().clamp(min=1)
            # Micro-batches accumulate gradients into one optimizer step: the same update as one
            # pass over the minibatch (each loss weighted by its share of the minibatch's
            # response tokens, so token means stay exact), with a fraction of the activations.
            # The engines step after every micro-batch and apply the update (clipped) on the last.
            micros = idx.split(micro_rows(p))
            dropped: set[str] = set()  # roles whose step of this minibatch a non-finite loss dropped
            for i, micro in enumerate(micros):
                seq, att, m = r.sequences[micro], r.attention_mask[micro], r.mask[micro]
                weight = m.sum() / tokens
                parts: dict[str, torch.Tensor] = {}
                if roles.critic is not None and "critic" not in dropped:
                    values = token_values(roles.critic, seq, att, r.prompt_len)
                    v_loss, v_clip = value_loss(values, r.values[micro], returns[micro], m, p.value_clip)
                    if checked_backward(roles.critic, weight * p.vf_coef * v_loss, guard, at, "the critic's loss"):
                        parts.update(value_loss=v_loss, value_clipfrac=v_clip)
                    else:
                        dropped.add("critic")
                if roles.critic is not None:
                    roles.critic.step()  # also when dropped: the engine counts micro-batches
                if train_policy and "policy" not in dropped:
                    logprobs, entropy = response_logprobs(roles.policy, seq, att, r.prompt_len, p.temperature,
                                                          with_entropy=p.entropy_coef != 0)
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
