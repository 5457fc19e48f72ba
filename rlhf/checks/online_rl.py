"""The checks of stage 3's online RL: ppo.* and reward.* (rlhf/config/online_rl.py, the
RewardConfig of rlhf/config/schema.py). They read the registries of rlhf.algos and the reward
sources of rlhf.sampling, which import torch: only when a config is checked."""

from __future__ import annotations

import re

from rlhf.config import RLHFConfig


def online_rl_problems(cfg: RLHFConfig) -> list[str]:
    """ppo.* (batch sizes, the algorithm's registered pieces, sampling) and reward.*."""
    from rlhf.algos import advantages, kl, policy_loss  # the stage-3 registries (imports torch)

    p, problems = cfg.ppo, []
    if p.mini_batch_size < 1 or p.rollout_batch_size % p.mini_batch_size:
        problems.append(f"ppo.rollout_batch_size={p.rollout_batch_size} must be divisible by "
                        f"ppo.mini_batch_size={p.mini_batch_size}")
    if p.micro_batch_size is not None and (p.micro_batch_size < 1 or p.mini_batch_size % p.micro_batch_size):
        problems.append(f"ppo.mini_batch_size={p.mini_batch_size} must be divisible by "
                        f"ppo.micro_batch_size={p.micro_batch_size} (or set it to null)")
    for registry, name in ((advantages.ADVANTAGES, p.advantage), (policy_loss.POLICY_LOSSES, p.policy_loss),
                           (kl.KL_ESTIMATORS, p.kl_estimator)):
        if registry.problem(name):
            problems.append(registry.problem(name))
    compares = "ppo.group_baseline=true" if p.group_baseline else f"ppo.advantage={p.advantage}"
    if p.samples_per_prompt < 2 and (p.group_baseline or (not advantages.ADVANTAGES.problem(p.advantage)
                                                           and advantages.needs_groups(p.advantage))):
        problems.append(f"{compares} compares the responses to one prompt: set ppo.samples_per_prompt >= 2 "
                        f"(it is {p.samples_per_prompt}; the algo files set 4)")
    if p.kl_loss_coef < 0:
        problems.append(f"ppo.kl_loss_coef={p.kl_loss_coef}: must be >= 0")
    if p.loss_agg not in policy_loss.LOSS_AGGREGATIONS:
        problems.append(f"ppo.loss_agg={p.loss_agg!r}: choose one of {', '.join(policy_loss.LOSS_AGGREGATIONS)}")
    if p.clip_high is not None and p.clip_high <= 0:
        problems.append(f"ppo.clip_high={p.clip_high}: must be > 0 (the ratio's upper bound is 1 + clip_high), or null")
    if p.drop_uniform_groups and p.samples_per_prompt < 2:
        problems.append("ppo.drop_uniform_groups=true leaves out groups whose answers all score alike: set "
                        f"ppo.samples_per_prompt >= 2 (it is {p.samples_per_prompt})")
    generated = p.max_new_tokens or cfg.data.max_response_tokens
    if p.overlong_buffer is not None and not 0 < p.overlong_buffer <= generated:
        problems.append(f"ppo.overlong_buffer={p.overlong_buffer}: the tokens before the generation limit "
                        f"({generated}) where the penalty ramps up; must lie in 1..{generated}, or null")
    problems += _reward_problems(cfg.reward, cfg.data)
    if p.samples_per_prompt < 1 or p.rollout_batch_size % p.samples_per_prompt:
        problems.append(f"ppo.rollout_batch_size={p.rollout_batch_size} counts responses, so it must be divisible "
                        f"by ppo.samples_per_prompt={p.samples_per_prompt} (>= 1)")
    if p.ema_decay is not None and not 0.0 < p.ema_decay < 1.0:
        problems.append(f"ppo.ema_decay={p.ema_decay}: must lie in (0, 1), or null for no EMA")
    if p.temperature <= 0:
        problems.append(f"ppo.temperature={p.temperature}: must be > 0")
    if p.max_new_tokens is not None and p.max_new_tokens > cfg.data.max_response_tokens:
        problems.append(f"ppo.max_new_tokens={p.max_new_tokens} exceeds data.max_response_tokens="
                        f"{cfg.data.max_response_tokens}, the longest response the SFT and RM saw")
    return problems


def _reward_problems(rw, d) -> list[str]:
    """reward.*: the source's own rules (each registered source's `problems`), then the values
    of the shared settings."""
    from rlhf.sampling.reward import CALLABLE_NAME, SOURCES  # (torch: only when a stage-3 config is read)

    problems = [SOURCES.problem(rw.source)] if SOURCES.problem(rw.source) else SOURCES[rw.source].problems(rw, d)
    if rw.check not in ("strict", "loose"):
        problems.append(f"reward.check={rw.check!r}: choose strict or loose")
    if rw.credit not in ("all", "fraction"):
        problems.append(f"reward.credit={rw.credit!r}: choose all or fraction")
    if rw.combine not in ("mean", "mean_minus_std"):
        problems.append(f"reward.combine={rw.combine!r}: choose mean or mean_minus_std")
    if rw.std_coef < 0:
        problems.append(f"reward.std_coef={rw.std_coef}: must be >= 0")
    for i, term in enumerate(rw.add):
        if (term.model is None) == (term.function is None):
            problems.append(f"reward.add[{i}]: give one of model (a reward-model folder) or function "
                            "(package.module:name)")
        elif term.function is not None and not re.fullmatch(CALLABLE_NAME, term.function):
            problems.append(f"reward.add[{i}].function={term.function!r}: name a callable as package.module:name")
    return problems
