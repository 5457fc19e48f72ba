"""From Hydra's composed config to a checked `RLHFConfig` (the schema lives in schema.py):
registering the schema, refusing keys it does not define, and the cross-field rules a type
cannot express. The rules read the registries (stages, stage-3 algorithms, toy tasks), so this
module sits above them, at the entry point's level; the schema itself imports nothing."""

from __future__ import annotations

import dataclasses
import re
import typing

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rlhf.config.runtime import attention_problems, rollout_engine_problems
from rlhf.config.schema import SPLITS, ConfigError, DataFormat, RLHFConfig

PAIR_MODES = ("all", "best")  # dpo.pairs (rlhf.data.preference_pairs)
# trl 1.16's DPOConfig.loss_type values for pairs (the unpaired and multi-loss ones left out)
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                  "apo_zero", "apo_down", "discopop", "sigmoid_norm")


def register_schemas() -> None:
    ConfigStore.instance().store(name="rlhf_schema", node=RLHFConfig)
    # hydra.run.dir: a later round's stages log beside their outputs, in runs/<run>/round_<n>/
    if not OmegaConf.has_resolver("round_folder"):
        OmegaConf.register_new_resolver("round_folder", lambda n: "" if int(n) == 1 else f"round_{n}/")


def to_config(composed: DictConfig) -> RLHFConfig:
    """The typed config. Hydra already rejects unknown keys and wrong types, except keys added
    with `+key=value`, which pass into structured nodes silently; those are refused here."""
    unknown = _unknown_keys(composed, RLHFConfig, "")
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}. Check the spelling; every "
                          "field is defined and documented in rlhf/config/schema.py")
    return OmegaConf.to_object(composed)


def _unknown_keys(node: DictConfig, schema: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(schema)
    found = []
    for key in node.keys():
        if key not in hints:
            found.append(prefix + str(key))
        elif dataclasses.is_dataclass(hints[key]):
            found += _unknown_keys(node[key], hints[key], f"{prefix}{key}.")
    return found


def check(cfg: RLHFConfig) -> None:
    """Cross-field rules; raises one ConfigError listing every problem found."""
    from rlhf import stages  # the registry: which stages exist, and the pipeline's order
    from rlhf.algos import advantages, kl, policy_loss  # the stage-3 registries (imports torch)

    problems: list[str] = []

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.run):
        problems.append(f"run={cfg.run!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    if cfg.stage.name not in (*stages.STAGES, stages.CHAIN):
        problems.append(f"stage.name={cfg.stage.name!r}: choose one of {', '.join([*stages.STAGES, stages.CHAIN])}")

    d = cfg.data
    fractions = {name: getattr(d.splits, name) for name in SPLITS}
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            problems.append(f"data.splits.{name}={value}: a fraction must lie in [0, 1]")
    unknown_shared = [s for s in d.splits.shared if s not in SPLITS]
    if unknown_shared:
        problems.append(f"data.splits.shared={d.splits.shared}: unknown split(s) {unknown_shared}; "
                        f"choose from {list(SPLITS)}")
    elif len(d.splits.shared) == 1:
        problems.append("data.splits.shared needs two or more splits to share (or none)")
    elif len({fractions[s] for s in d.splits.shared}) > 1:
        shown = ", ".join(f"data.splits.{s}={fractions[s]}" for s in d.splits.shared)
        problems.append(f"data.splits.shared={d.splits.shared}: shared splits get the same prompts, "
                        f"so their fractions must be equal ({shown})")
    total = _bucket_total(fractions, [] if unknown_shared else d.splits.shared)
    if total > 1.0 + 1e-9:
        problems.append(f"data.splits: the fractions {fractions} use {total:.3f} of the prompts "
                        f"(more than 1); lower some of data.splits.sft/rm/ppo/eval")
    if total <= 0.0:
        problems.append("data.splits: every fraction is 0, so no prompt would be used")

    if d.format is DataFormat.toy:
        if d.path or d.hub_id:
            problems.append(f"data.format=toy generates its data; data.path={d.path!r} and "
                            f"data.hub_id={d.hub_id!r} must be null (or pick another data.format)")
        t = d.toy
        if not 1 <= t.min_items <= t.max_items:
            problems.append(f"data.toy.min_items={t.min_items} and data.toy.max_items={t.max_items}: "
                            "need 1 <= min_items <= max_items")
        if t.responses_per_comparison < 2:
            problems.append(f"data.toy.responses_per_comparison={t.responses_per_comparison}: "
                            "a comparison needs K >= 2")
        for name in ("flawed_fraction", "label_noise"):
            if not 0.0 <= getattr(t, name) <= 1.0:
                problems.append(f"data.toy.{name}={getattr(t, name)}: must lie in [0, 1]")
        from rlhf.data.toy import FLAWS, TASKS

        bad_tasks = [x for x in t.tasks if x not in TASKS]
        if bad_tasks or not t.tasks:
            problems.append(f"data.toy.tasks={t.tasks}: choose one or more of {sorted(TASKS)}")
        if not t.demo_flaws or any(x not in FLAWS for x in t.demo_flaws):
            problems.append(f"data.toy.demo_flaws={t.demo_flaws}: choose one or more of {list(FLAWS)}")
        if t.demo_flaw_mode not in ("random", "systematic"):
            problems.append(f"data.toy.demo_flaw_mode={t.demo_flaw_mode!r}: random or systematic")
    elif not d.path and not d.hub_id:
        problems.append(f"data.format={d.format.value} reads records: set data.path (a local file) "
                        "or data.hub_id (a Hugging Face dataset)")
    for where, src in (("data", d), *((f"data.sources[{i}]", x) for i, x in enumerate(d.sources))):
        if where != "data":
            if src.format is DataFormat.toy:
                problems.append(f"{where}.format=toy: the toy task is the main source only (data.format=toy); "
                                "an extra source reads a file or hub dataset")
            elif not src.path and not src.hub_id:
                problems.append(f"{where} ({src.name}): set path (a local file) or hub_id (a Hugging Face dataset)")
        if src.max_records is not None and src.max_records < 1:
            problems.append(f"{where}.max_records={src.max_records}: must be >= 1 (or null for all)")
        if src.weight < 0:
            problems.append(f"{where}.weight={src.weight}: must be >= 0")
        try:
            import codecs

            codecs.lookup(src.encoding)
        except LookupError:
            problems.append(f"{where}.encoding={src.encoding!r}: not a Python codec name (utf-8, latin-1, "
                            "cp1252, utf-16, ...)")
    names = [d.name, *(x.name for x in d.sources)]
    if len(set(names)) < len(names):
        problems.append(f"data.name and data.sources[*].name must differ (they label per-source counts): {names}")
    for name in ("max_prompt_tokens", "max_response_tokens"):
        if getattr(d, name) < 1:
            problems.append(f"data.{name}={getattr(d, name)}: must be >= 1")

    m = cfg.model
    if m.dtype not in ("float32", "bfloat16", "float16"):
        problems.append(f"model.dtype={m.dtype!r}: choose float32, bfloat16 or float16")
    problems += attention_problems(m)
    if m.name_or_path is None:
        t = m.tiny
        if t.hidden_size % t.num_attention_heads:
            problems.append(f"model.tiny.hidden_size={t.hidden_size} must be divisible by "
                            f"model.tiny.num_attention_heads={t.num_attention_heads}")
        if d.max_prompt_tokens + d.max_response_tokens > t.max_position_embeddings:
            problems.append(f"data.max_prompt_tokens + data.max_response_tokens = "
                            f"{d.max_prompt_tokens + d.max_response_tokens} exceeds "
                            f"model.tiny.max_position_embeddings={t.max_position_embeddings}")

    for name in ("sft", "rm", "dpo", "bon_sft"):
        t = getattr(cfg, name)
        for key in ("per_device_batch_size", "gradient_accumulation_steps"):
            if getattr(t, key) < 1:
                problems.append(f"{name}.{key}={getattr(t, key)}: must be >= 1")
        if t.max_steps <= 0 and t.epochs <= 0:
            problems.append(f"{name}.epochs={t.epochs} and {name}.max_steps={t.max_steps}: set one of them > 0")
        if not 0.0 <= t.dropout < 1.0:
            problems.append(f"{name}.dropout={t.dropout}: must lie in [0, 1)")
        if t.learning_rate <= 0:
            problems.append(f"{name}.learning_rate={t.learning_rate}: must be > 0")

    o = cfg.dpo
    if o.pairs not in PAIR_MODES:
        problems.append(f"dpo.pairs={o.pairs!r}: choose {' or '.join(PAIR_MODES)}")
    if o.loss_type not in DPO_LOSS_TYPES:
        problems.append(f"dpo.loss_type={o.loss_type!r}: choose one of trl's {', '.join(DPO_LOSS_TYPES)}")
    if o.sft_loss_coef < 0:
        problems.append(f"dpo.sft_loss_coef={o.sft_loss_coef}: must be >= 0")
    if o.beta <= 0:
        problems.append(f"dpo.beta={o.beta}: must be > 0")
    if not 0.0 <= o.label_smoothing < 0.5:
        problems.append(f"dpo.label_smoothing={o.label_smoothing}: must lie in [0, 0.5)")
    b = cfg.bon_sft
    for key in ("n", "rounds", "generation_batch_size"):
        if getattr(b, key) < 1:
            problems.append(f"bon_sft.{key}={getattr(b, key)}: must be >= 1")
    if b.prompts is not None and b.prompts < 1:
        problems.append(f"bon_sft.prompts={b.prompts}: must be >= 1 (or null for the whole ppo split)")
    if b.temperature <= 0:
        problems.append(f"bon_sft.temperature={b.temperature}: must be > 0")
    for name, value in (("bon_sft", b.max_new_tokens), ("dpo", o.max_new_tokens)):
        if value is not None and value > cfg.data.max_response_tokens:
            problems.append(f"{name}.max_new_tokens={value} exceeds data.max_response_tokens="
                            f"{cfg.data.max_response_tokens}, the longest response the SFT and RM saw")

    p = cfg.ppo
    if p.mini_batch_size < 1 or p.rollout_batch_size % p.mini_batch_size:
        problems.append(f"ppo.rollout_batch_size={p.rollout_batch_size} must be divisible by "
                        f"ppo.mini_batch_size={p.mini_batch_size}")
    if p.micro_batch_size is not None and (p.micro_batch_size < 1 or p.mini_batch_size % p.micro_batch_size):
        problems.append(f"ppo.mini_batch_size={p.mini_batch_size} must be divisible by "
                        f"ppo.micro_batch_size={p.micro_batch_size} (or set it to null)")
    problems += rollout_engine_problems(cfg, runs_stage3=cfg.stage.name in ("ppo", stages.CHAIN))
    if (cfg.model.gguf_package is None) != (cfg.model.gguf_file is None):
        problems.append("model.gguf_package and model.gguf_file go together: set both, or neither")
    lora = cfg.model.lora
    if lora.enabled and (lora.r < 1 or lora.alpha <= 0):
        problems.append(f"model.lora.r={lora.r}, model.lora.alpha={lora.alpha}: both must be positive")
    c = cfg.compare
    bad_modes = [m for m in c.modes if m not in ("sampled", "greedy")]
    if bad_modes or not c.modes:
        problems.append(f"compare.modes={list(c.modes)}: choose from sampled, greedy")
    if not 0.0 < c.confidence < 1.0:
        problems.append(f"compare.confidence={c.confidence}: must lie in (0, 1)")
    if c.policies is not None and not (isinstance(c.policies, dict) and all(
            isinstance(v, str) for v in c.policies.values())):
        problems.append(f"compare.policies={c.policies!r}: give a dict of name -> folder, hub id or bon:<n>, e.g. "
                        "compare.policies='{sft: runs/a/sft/final, bon4: \"bon:4\"}'")
    for name, spec in (c.policies if isinstance(c.policies, dict) else {}).items():
        if spec.startswith("bon:") and not (spec[4:].isdigit() and int(spec[4:]) >= 1):
            problems.append(f"compare.policies.{name}={spec!r}: write bon:<n> with n >= 1, e.g. bon:4")
    if isinstance(c.policies, dict) and c.policies and c.baseline not in c.policies:
        problems.append(f"compare.baseline={c.baseline!r} is not one of compare.policies ({', '.join(c.policies)})")
    ev = cfg.evaluate
    if ev.split not in ("all", *SPLITS):
        problems.append(f"evaluate.split={ev.split!r}: choose all (every record) or one split: {', '.join(SPLITS)}")
    for key in ("prompts", "samples_per_prompt", "batch_size", "bootstrap_resamples"):
        if getattr(ev, key) < 1:
            problems.append(f"evaluate.{key}={getattr(ev, key)}: must be >= 1")
    if ev.max_comparisons is not None and ev.max_comparisons < 1:
        problems.append(f"evaluate.max_comparisons={ev.max_comparisons}: must be >= 1 (or null for all)")
    if ev.max_new_tokens is not None and ev.max_new_tokens < 1:
        problems.append(f"evaluate.max_new_tokens={ev.max_new_tokens}: must be >= 1 (or null for "
                        "data.max_response_tokens)")
    if ev.temperature <= 0:
        problems.append(f"evaluate.temperature={ev.temperature}: must be > 0 (evaluate.greedy=true for greedy answers)")
    if not 0.0 < ev.confidence < 1.0:
        problems.append(f"evaluate.confidence={ev.confidence}: must lie in (0, 1)")
    if ev.policies is not None and not (isinstance(ev.policies, dict) and all(
            isinstance(v, str) for v in ev.policies.values())):
        problems.append(f"evaluate.policies={ev.policies!r}: give a dict of name -> folder or hub id, e.g. "
                        "evaluate.policies='{sft: runs/a/sft/final, ppo: runs/a/ppo/final}'")
    elif ev.policies:
        bons = [name for name, spec in ev.policies.items() if spec.startswith("bon:")]
        if bons:
            problems.append(f"evaluate.policies {bons}: best-of-n is compare's (compare.policies); evaluate "
                            "answers with checkpoints or hub ids")
        if ev.baseline is not None and ev.baseline not in ev.policies:
            problems.append(f"evaluate.baseline={ev.baseline!r} is not one of evaluate.policies "
                            f"({', '.join(ev.policies)})")
    elif ev.baseline is not None:
        problems.append(f"evaluate.baseline={ev.baseline!r} names a policy, and evaluate.policies is empty")
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
    if cfg.variant is not None and (not cfg.variant.strip() or "/" in cfg.variant or "\n" in cfg.variant):
        problems.append(f"variant={cfg.variant!r}: it names folders (runs/<run>/<stage>@<variant>), so it must be "
                        "non-empty and hold no '/'")
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
    problems += _loop_problems(cfg, stages)
    chain = stages.pipeline_stages(optional=True, round=cfg.loop.round)
    if cfg.stages is not None and cfg.stage.name == stages.CHAIN:  # (an experiment's stages= is for its pipeline)
        order = [s for s in chain if s in cfg.stages]
        if not cfg.stages or list(cfg.stages) != order:
            first_only = [s for s in cfg.stages if s in stages.pipeline_stages(optional=True) and s not in chain]
            hint = (f" ({', '.join(first_only)} of round 1 serves later rounds: name collect instead, e.g. "
                    f"stages={[s for s in ['collect', *cfg.stages] if s in chain]})".replace("'", "")
                    if first_only else "")
            problems.append(f"stages={list(cfg.stages)}: choose from {chain}, each once, in that order{hint}")
    ds = cfg.deepspeed
    if ds.name != "none":
        stage = (ds.config or {}).get("zero_optimization", {}).get("stage")
        if stage not in (0, 1, 2, 3):
            problems.append(f"deepspeed={ds.name}: deepspeed.config.zero_optimization.stage={stage!r}; choose 0-3")
        elif stage == 3 and lora.enabled:
            problems.append("model.lora.enabled=true with ZeRO-3 is not supported yet (the adapter merge needs the "
                            "whole weights on one rank): use deepspeed=zero2, whose parameters are whole on every rank")
        elif stage == 3 and p.ema_decay is not None:
            problems.append("ppo.ema_decay with ZeRO-3 is not supported (the EMA would average weight shards): "
                            "use deepspeed=zero2, or ppo.ema_decay=null")

    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _loop_problems(cfg: RLHFConfig, stages) -> list[str]:
    """collect.* and loop.*: the feedback loop's rounds."""
    c, lp, problems = cfg.collect, cfg.loop, []
    if lp.round < 1:
        problems.append(f"loop.round={lp.round}: rounds count from 1")
    for name in ("rm_from", "policy_from"):
        if getattr(lp, name) not in ("sft", "previous"):
            problems.append(f"loop.{name}={getattr(lp, name)!r}: choose sft or previous")
    if lp.policy_stage not in stages.policy_stages():
        problems.append(f"loop.policy_stage={lp.policy_stage!r}: choose a stage that trains a policy, one of "
                        f"{stages.policy_stages()}")
    if c.labeller not in ("gold", "verifier", "none"):
        problems.append(f"collect.labeller={c.labeller!r}: choose gold (the toy task's simulated labeller), verifier "
                        "(the checks of data=ifeval's instructions) or none (ranks left empty, for a person to fill in)")
    elif c.labeller == "verifier" and cfg.data.format is not DataFormat.ifeval:
        problems.append(f"collect.labeller=verifier ranks by the prompts' verifiable instructions: it needs data=ifeval, "
                        f"not data.format={cfg.data.format.value}")
    elif c.labeller == "gold" and cfg.data.format is not DataFormat.toy and (
            cfg.stage.name == "collect" or (cfg.stage.name == stages.CHAIN and "collect" in (
                cfg.stages or stages.pipeline_stages(round=lp.round)))):
        problems.append(f"collect.labeller=gold ranks by the toy task's gold scorer, and data.format="
                        f"{cfg.data.format.value} has none: set collect.labeller=none and rank the file "
                        "(docs/collect.md)")
    if c.answers_per_prompt < 2:
        problems.append(f"collect.answers_per_prompt={c.answers_per_prompt}: a comparison needs K >= 2")
    unknown = [s for s in c.splits if s not in SPLITS]
    if unknown or (not c.splits and not c.prompts_file):
        problems.append(f"collect.splits={list(c.splits)}: choose one or more of {list(SPLITS)} "
                        "(or set collect.prompts_file)")
    if c.max_prompts is not None and c.max_prompts < 1:
        problems.append(f"collect.max_prompts={c.max_prompts}: must be >= 1 (or null for all)")
    if c.temperature <= 0:
        problems.append(f"collect.temperature={c.temperature}: must be > 0")
    if c.label_noise is not None and not 0.0 <= c.label_noise <= 1.0:
        problems.append(f"collect.label_noise={c.label_noise}: must lie in [0, 1]")
    if cfg.rm.collected_weight < 0:
        problems.append(f"rm.collected_weight={cfg.rm.collected_weight}: must be >= 0")
    return problems


def _reward_problems(rw, d) -> list[str]:
    callable_name = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"
    problems = []
    from rlhf.sampling.reward import SOURCES  # (torch: only when a stage-3 config is read)

    if rw.source not in SOURCES:
        problems.append(f"reward.source={rw.source!r}: choose one of {', '.join(SOURCES)}")
    elif rw.source == "function" and not re.fullmatch(callable_name, rw.function or ""):
        problems.append(f"reward.function={rw.function!r}: with reward.source=function name a callable as "
                        "package.module:name, e.g. reward.function=rlhf.data.toy:gold_score")
    elif rw.source == "verifier" and any(src.format is not DataFormat.ifeval for src in (d, *d.sources)):
        problems.append("reward.source=verifier checks the instructions each prompt carries: it needs "
                        f"data=ifeval (prompts with verifiable instructions) for every source, not "
                        f"{', '.join(sorted({src.format.value for src in (d, *d.sources)}))}")
    elif rw.source == "ensemble" and len(rw.members) == 1:
        problems.append(f"reward.members={list(rw.members)}: an ensemble needs at least 2 reward models "
                        "(or leave it empty for every rm and rm@* of the run)")
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
        elif term.function is not None and not re.fullmatch(callable_name, term.function):
            problems.append(f"reward.add[{i}].function={term.function!r}: name a callable as package.module:name")
    return problems


def _bucket_total(fractions: dict[str, float], shared: list[str]) -> float:
    """Share of the prompt space the splits use; shared splits use one bucket together."""
    if len(shared) < 2:
        return sum(fractions.values())
    return sum(v for k, v in fractions.items() if k not in shared) + max(fractions[s] for s in shared)
