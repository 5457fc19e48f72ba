"""Stage 3, `rlhf stage=ppo`: online RL against the reward model (InstructGPT's objective).

    for each update:
        prompts     the next rollout_batch_size / samples_per_prompt prompts of the ppo split
        rollout     samples_per_prompt responses each, with reference log-probs, the critic's
                    values (when there is one) and the reward source's scores (rollout.py; the
                    source: reward=model|function|ensemble|verifier, rlhf/sampling/reward.py);
                    sampled by the policy, or by a vLLM engine holding its weights
                    (ppo.rollout_engine=vllm)
        update      rewards, advantages, optimisation epochs, statistics (update.py)
        sync        the sampler given the updated weights (vLLM's engine; the policy needs none)
        log, evaluate, checkpoint

PPO is the default set of pieces (conf/algo/ppo.yaml): a critic, `gae`, `ppo_clip`. trl 1.16 has
no PPO trainer (removed in 1.13), so this loop is ours. The roles are built in roles.py, with or
without DeepSpeed; the loop is the same either way. With several ranks each samples its share
of the prompts (whole groups), and statistics that need the whole batch are taken over all ranks.
"""

from __future__ import annotations

import logging
import random

import torch
from tqdm.auto import tqdm

from rlhf.algos.advantages import needs_critic
from rlhf.algos.kl import KLController
from rlhf.config import ConfigError, RLHFConfig
from rlhf.core import distributed
from rlhf.core.artifacts import StageRun, save_final
from rlhf.core.distributed import full_weights, is_main_process, module_of
from rlhf.core.nonfinite import NonFiniteGuard
from rlhf.core.preemption import stop_request
from rlhf.core.tracking import Tracker
from rlhf.data import describe_source, encode_prompts, encode_responses, load_data
from rlhf.data.stream import Stream
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.sampling import build_reward, gold_evaluation
from rlhf.stages import resolve_inputs, reward_models
from rlhf.stages.online_rl.checkpoint import load_latest, save_checkpoint
from rlhf.stages.online_rl.roles import Roles, build_roles, micro_rows
from rlhf.stages.online_rl.rollout import build_sampler, rollout
from rlhf.stages.online_rl.update import update

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
    stage_run.manifest.update(inputs={"data": describe_source(cfg.data), **inputs}, data=data.summary())
    roles = load_roles(cfg, tokenizer, inputs, data.gold_scorer)
    # what compare labels this policy by: the algorithm and the reward it was trained against
    stage_run.manifest["method"] = {"algorithm": algorithm_name(p), "reward": roles.reward.describe(),
                                    "label": method_label(p, roles.reward)}
    kl_ctl = KLController(p.beta, p.kl_target, p.kl_horizon)
    ema = EMA(module_of(roles.policy), p.ema_decay) if p.ema_decay else None
    start, evals = resume(cfg, roles, kl_ctl, prompts)  # evals: the manifest's curve (compare plots gold vs sqrt(KL))
    sampler = build_sampler(cfg, roles, tokenizer, eval_prompts, max_new_tokens, stage_run, start)
    tracker = Tracker(cfg.stage_dir, "ppo", cfg.logger.backend.value, cfg.logger.wandb_project)
    stop = stop_request()
    guard = NonFiniteGuard(p.skip_nonfinite, "ppo.skip_nonfinite")

    def checkpoint(done: int):
        return save_checkpoint(cfg.stage_dir / "checkpoints", roles, done,
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
    progress = tqdm(range(start + 1, p.updates + 1), desc="ppo", disable=not is_main_process(), initial=start,
                    total=p.updates)
    for done in progress:  # the updates done once this one is
        batch_prompts, groups = next_prompts(prompts, p)
        r = rollout(roles, tokenizer, encode_prompts(tokenizer, batch_prompts), p, max_new_tokens, groups,
                    prompts=batch_prompts, sampler=sampler)
        stats = update(roles, r, p, kl_ctl.beta, max_new_tokens=max_new_tokens, ptx_examples=ptx_examples,
                       pad_id=tokenizer.pad_token_id, guard=guard, where=f"update {done}",
                       train_policy=roles.critic is None or done > p.critic_warmup_updates)
        skipped = {"nonfinite_skipped": guard.skipped} if p.skip_nonfinite else {}
        stage_run.metrics.update(skipped)
        if stats is None:  # skipped: no checkpoint either, nothing changed since the last one
            continue
        stats.update(skipped, **{f"time_{k}_s": v for k, v in r.seconds.items()}, **sampler.sync(roles.policy))
        if data.gold_scorer is not None:
            stats["gold_score"] = sum(data.gold_scorer(q, t) for q, t in zip(batch_prompts, r.texts)) / len(r.texts)
        stats = distributed.mean_over_ranks(stats)
        kl_ctl.update(stats["kl"], p.rollout_batch_size)
        if ema is not None:
            ema.update()
        stats["beta"] = kl_ctl.beta
        tracker.log(stats, done)
        progress.set_postfix(score=f"{stats['score']:.2f}", kl=f"{stats['kl']:.2f}",
                             gold=f"{stats.get('gold_score', float('nan')):.3f}")
        stage_run.metrics["last_update"] = stats
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
    finish(cfg, roles, tokenizer, stage_run)


def resume(cfg: RLHFConfig, roles: Roles, kl_ctl: KLController, prompts: Stream) -> tuple[int, list[dict]]:
    """(the updates done, the evaluations so far) from the latest checkpoint, whose state it
    loads into the roles, the KL controller and the prompt stream; (0, []) without one."""
    resumed = load_latest(cfg.stage_dir / "checkpoints", roles)
    if not resumed:
        return 0, []
    path, saved = resumed
    kl_ctl.load_state_dict(saved["kl"])
    prompts.load_state_dict(saved["prompts"])
    log.info("resumed from %s at update %d", path, saved["update"])
    return saved["update"], list(saved.get("evals", []))


def finish(cfg: RLHFConfig, roles: Roles, tokenizer, stage_run: StageRun) -> None:
    """The final policy, and where each role ran, into the stage's folder and manifest."""
    stage_run.manifest["distributed"] = {role: distributed.describe(model, cfg) for role, model in roles.models().items()}
    if not roles.reward.models():  # a function alone
        stage_run.manifest["distributed"]["reward"] = roles.reward.describe()
    save_final(roles.policy, tokenizer, cfg.stage_dir / "final")
    log.info("stage 3 (%s) done: %s", cfg.ppo.advantage,
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
    if gold_scorer is None or not prompts:  # ppo.eval_prompts=0: no evaluation during training
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
