"""From Hydra's composed config to a checked `RLHFConfig`: registering the schema (and one
`stage=<name>` option per registered stage), refusing keys the schema does not define, and the
cross-field rules a type cannot express, one function per config section: here, and beside it
online_rl.py (ppo.*, reward.*) and runtime.py (attention, rollout engine, LoRA, DeepSpeed).

It sits at the entry layer, beside cli.py, because the rules read every registry: the stages,
stage 3's algorithms and reward sources, the toy tasks. The schema (rlhf/config/) stays below
all of them and imports none. The registries that pull in torch are imported inside the
functions that read them, so `rlhf --help` does not load torch."""

from __future__ import annotations

import codecs
import dataclasses
import re
import typing

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rlhf import stages
from rlhf.config import SPLITS, ConfigError, DataFormat, RLHFConfig, TrainConfig
from rlhf.checks.online_rl import online_rl_problems
from rlhf.checks.runtime import runtime_problems

PAIR_MODES = ("all", "best")  # dpo.pairs (rlhf.data.preference_pairs)
# trl 1.16's DPOConfig.loss_type values for pairs (the unpaired and multi-loss ones left out)
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                  "apo_zero", "apo_down", "discopop", "sigmoid_norm")


def register_schemas() -> None:
    """Before Hydra composes: the schema, and the options of `stage=`, one per registered stage
    and the pipeline, made here from the registry rather than written again as conf/stage/ files.
    (What each stage does and where its options live: the registry, `rlhf --list-stages=all`.)"""
    store = ConfigStore.instance()
    store.store(name="rlhf_schema", node=RLHFConfig)
    for name in (*stages.STAGES, stages.CHAIN):
        store.store(group="stage", name=name, node={"name": name})
    # hydra.run.dir: a later round's stages log beside their outputs, in runs/<run>/round_<n>/
    if not OmegaConf.has_resolver("round_folder"):
        OmegaConf.register_new_resolver("round_folder", lambda n: "" if int(n) == 1 else f"round_{n}/")
    if not OmegaConf.has_resolver("at_variant"):  # and a variant's in <stage>@<variant>/, with its outputs
        OmegaConf.register_new_resolver("at_variant", lambda v: f"@{v}" if v else "")
    if not OmegaConf.has_resolver("builtin_data"):  # data/'s files, from any folder
        from rlhf.data.files import builtin

        OmegaConf.register_new_resolver("builtin_data", builtin)


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
    problems = [*run_problems(cfg), *data_problems(cfg), *model_problems(cfg), *trainer_problems(cfg),
                *online_rl_problems(cfg), *judging_problems(cfg), *loop_problems(cfg), *runtime_problems(cfg)]
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def run_problems(cfg: RLHFConfig) -> list[str]:
    """run, variant, stage.name and stages=: what runs, and the folders it writes."""
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.run):
        problems.append(f"run={cfg.run!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    if cfg.stage.name not in (*stages.STAGES, stages.CHAIN):
        problems.append(f"stage.name={cfg.stage.name!r}: choose one of {', '.join([*stages.STAGES, stages.CHAIN])}")
    if cfg.variant is not None and (not cfg.variant.strip() or "/" in cfg.variant or "\n" in cfg.variant):
        problems.append(f"variant={cfg.variant!r}: it names folders (runs/<run>/<stage>@<variant>), so it must be "
                        "non-empty and hold no '/'")
    chain = stages.pipeline_stages(optional=True, round=cfg.loop.round)
    if cfg.stages is not None and cfg.stage.name == stages.CHAIN:  # (an experiment's stages= is for its pipeline)
        order = [s for s in chain if s in cfg.stages]
        if not cfg.stages or list(cfg.stages) != order:
            first_only = [s for s in cfg.stages if s in stages.pipeline_stages(optional=True) and s not in chain]
            hint = (f" ({', '.join(first_only)} of round 1 serves later rounds: name collect instead, e.g. "
                    f"stages={[s for s in ['collect', *cfg.stages] if s in chain]})".replace("'", "")
                    if first_only else "")
            problems.append(f"stages={list(cfg.stages)}: choose from {chain}, each once, in that order{hint}")
    return problems


def data_problems(cfg: RLHFConfig) -> list[str]:
    """data.*: the splits' fractions, the toy task, every source and the token lengths."""
    d, problems = cfg.data, []
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
        problems += _toy_problems(d)
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
        if src.split is not None and src.split not in SPLITS:
            problems.append(f"{where}.split={src.split!r}: choose from {list(SPLITS)} (or null: by the prompt's hash)")
        try:
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
    return problems


def _toy_problems(d) -> list[str]:
    """data.format=toy: the generator's settings, its tasks and flaws from rlhf.data.toy."""
    from rlhf.data.toy import FLAWS, TASKS

    t, problems = d.toy, []
    if d.path or d.hub_id:
        problems.append(f"data.format=toy generates its data; data.path={d.path!r} and "
                        f"data.hub_id={d.hub_id!r} must be null (or pick another data.format)")
    if not 1 <= t.min_items <= t.max_items:
        problems.append(f"data.toy.min_items={t.min_items} and data.toy.max_items={t.max_items}: "
                        "need 1 <= min_items <= max_items")
    if t.responses_per_comparison < 2:
        problems.append(f"data.toy.responses_per_comparison={t.responses_per_comparison}: "
                        "a comparison needs K >= 2")
    for name in ("flawed_fraction", "label_noise"):
        if not 0.0 <= getattr(t, name) <= 1.0:
            problems.append(f"data.toy.{name}={getattr(t, name)}: must lie in [0, 1]")
    bad_tasks = [x for x in t.tasks if x not in TASKS]
    if bad_tasks or not t.tasks:
        problems.append(f"data.toy.tasks={t.tasks}: choose one or more of {sorted(TASKS)}")
    if not t.demo_flaws or any(x not in FLAWS for x in t.demo_flaws):
        problems.append(f"data.toy.demo_flaws={t.demo_flaws}: choose one or more of {list(FLAWS)}")
    if t.demo_flaw_mode not in ("random", "systematic"):
        problems.append(f"data.toy.demo_flaw_mode={t.demo_flaw_mode!r}: random or systematic")
    return problems


def model_problems(cfg: RLHFConfig) -> list[str]:
    """model.*: the dtype, and the tiny model's shape against the token lengths."""
    m, d, problems = cfg.model, cfg.data, []
    if m.dtype not in ("float32", "bfloat16", "float16"):
        problems.append(f"model.dtype={m.dtype!r}: choose float32, bfloat16 or float16")
    if m.name_or_path is None:
        t = m.tiny
        if t.hidden_size % t.num_attention_heads:
            problems.append(f"model.tiny.hidden_size={t.hidden_size} must be divisible by "
                            f"model.tiny.num_attention_heads={t.num_attention_heads}")
        if d.max_prompt_tokens + d.max_response_tokens > t.max_position_embeddings:
            problems.append(f"data.max_prompt_tokens + data.max_response_tokens = "
                            f"{d.max_prompt_tokens + d.max_response_tokens} exceeds "
                            f"model.tiny.max_position_embeddings={t.max_position_embeddings}")
    return problems


def trainer_problems(cfg: RLHFConfig) -> list[str]:
    """The stages trained by a Trainer (sft, rm, dpo, bon_sft: a TrainConfig section), then dpo's
    and bon_sft's own settings."""
    problems = []
    for name in dict.fromkeys(s.section for s in stages.STAGES.values()):
        t = getattr(cfg, name)
        if not isinstance(t, TrainConfig):
            continue
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
    return problems


def judging_problems(cfg: RLHFConfig) -> list[str]:
    """compare.* and evaluate.*: the sampling and statistics settings, and the policies judged."""
    c, ev, problems = cfg.compare, cfg.evaluate, []
    bad_modes = [m for m in c.modes if m not in ("sampled", "greedy")]
    if bad_modes or not c.modes:
        problems.append(f"compare.modes={list(c.modes)}: choose from sampled, greedy")
    if not 0.0 < c.confidence < 1.0:
        problems.append(f"compare.confidence={c.confidence}: must lie in (0, 1)")
    problems += _policies_problems("compare", c.policies, c.baseline, best_of_n=True)
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
    return problems + _policies_problems("evaluate", ev.policies, ev.baseline, best_of_n=False)


def _policies_problems(section: str, policies, baseline: str | None, best_of_n: bool) -> list[str]:
    """compare.policies and evaluate.policies: null or a dict of name -> folder or hub id (compare's
    also bon:<n>), with the baseline one of them. Null means compare takes this run's policies
    (its baseline is checked when they are known), and evaluate judges no policy."""
    accepts, example = (("folder, hub id or bon:<n>", '{sft: runs/a/sft/final, bon4: "bon:4"}') if best_of_n
                        else ("folder or hub id", "{sft: runs/a/sft/final, ppo: runs/a/ppo/final}"))
    if policies is not None and not (isinstance(policies, dict) and all(isinstance(v, str) for v in policies.values())):
        return [f"{section}.policies={policies!r}: give a dict of name -> {accepts}, e.g. {section}.policies='{example}'"]
    if not policies:
        return [] if best_of_n or baseline is None else [
            f"{section}.baseline={baseline!r} names a policy, and {section}.policies is empty"]
    problems = []
    bons = [name for name, spec in policies.items() if spec.startswith("bon:")]
    if best_of_n:
        problems += [f"{section}.policies.{name}={policies[name]!r}: write bon:<n> with n >= 1, e.g. bon:4"
                     for name in bons if not (policies[name][4:].isdigit() and int(policies[name][4:]) >= 1)]
    elif bons:
        problems.append(f"{section}.policies {bons}: best-of-n is compare's (compare.policies); {section} "
                        "answers with checkpoints or hub ids")
    if baseline is not None and baseline not in policies:
        problems.append(f"{section}.baseline={baseline!r} is not one of {section}.policies ({', '.join(policies)})")
    return problems


def loop_problems(cfg: RLHFConfig) -> list[str]:
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


def _bucket_total(fractions: dict[str, float], shared: list[str]) -> float:
    """Share of the prompt space the splits use; shared splits use one bucket together."""
    if len(shared) < 2:
        return sum(fractions.values())
    return sum(v for k, v in fractions.items() if k not in shared) + max(fractions[s] for s in shared)
