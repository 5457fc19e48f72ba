"""The stage registry: every stage's name, module, inputs (with their defaults) and output, in
the order the pipeline runs them. The pipeline, lineage, the config checks, compare's and
generate's default policies, the "run stage X first" errors and jobs/ (through `rlhf
--list-stages`) all read it, and `stage=<name>` is an option because it is listed here
(rlhf/checks/ registers one per entry). Adding a stage means an entry below, its module (a
function `run(cfg, stage_run)`) and its options' section in rlhf/config/schema.py.

Folders are resolved here and nowhere else: runs/<run>/<stage> for round 1 of the feedback loop,
runs/<run>/round_<n>/<stage> for a later one (loop.round), <stage>@<variant> for a sweep's point.

Imports nothing heavy: `rlhf --list-stages` and the config checks read it before any model.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rlhf.config import ConfigError, DataConfig, DataFormat, RLHFConfig, SourceConfig, round_dir

log = logging.getLogger(__name__)

CHAIN = "pipeline"  # stage=pipeline runs the registered pipeline stages in order (rlhf/pipeline.py)


@dataclass(frozen=True)
class Input:
    """A model a stage reads, set by `<section>.<field>`; when that is null, the default is
    the output of `produced_by` in this run, or the value of another input (the first of
    `same_as` that is read), or the configured base model (`base_model`: model.name_or_path, the
    tiny model when null)."""

    field: str
    produced_by: Optional[str] = None
    same_as: tuple[str, ...] = ()  # the first of these inputs that this stage reads
    base_model: bool = False
    needed: Optional[Callable[[RLHFConfig], bool]] = None  # null: always read
    # In a later round of the feedback loop (loop.round > 1): the stage whose output of the
    # previous round this input reads instead of the default above (None: the default)
    previous_round: Optional[Callable[[RLHFConfig], Optional[str]]] = None


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # holds `run(cfg: RLHFConfig, stage_run: StageRun)`
    summary: str  # one line for `rlhf --list-stages -v` and the docs
    section: str  # the config section with its options: cfg.<section>
    inputs: tuple[Input, ...] = ()
    output: Optional[str] = None  # under runs/<run>/<name>/: what later stages read; its existence means done
    produces_policy: bool = False  # compare and generate default to the policies of such stages
    in_pipeline: bool = False  # stage=pipeline may run it (in the registry's order)
    # in_pipeline: the rounds whose stage=pipeline runs it without `stages=` (all, first, later;
    # none: only when named); in its other rounds, naming it in `stages=` runs it
    default_rounds: str = "all"
    # extra inputs resolved at run time, by role (compare's policies); merged into the lineage
    dynamic_inputs: Optional[Callable[[RLHFConfig], dict[str, str]]] = None
    also_reads: tuple[str, ...] = ()  # config sections besides its own that shape its result (lineage)
    # False: writes nothing another stage reads, so it runs beside a stage training in the same
    # run (no run lock, rlhf/core/runlock.py): generate, to look at a checkpoint mid-training
    writes_run: bool = True
    # Which rounds of the feedback loop (loop.round) may run it in the pipeline: all, first (sft: a
    # later round reads round 1's), later
    rounds: str = "all"


def _uses_critic(cfg: RLHFConfig) -> bool:
    from rlhf.algos.advantages import needs_critic  # (torch: only when a stage-3 config is read)

    return needs_critic(cfg.ppo.advantage)


def _reads_reward_model(cfg: RLHFConfig) -> bool:
    return cfg.reward.source == "model"


def _compare_has_rm(cfg: RLHFConfig) -> bool:
    """Compare judges by a reward model when one is given or this run trained one; without, by
    the gold scorer alone (a run of DPO, which trains no RM, on the toy task)."""
    return cfg.compare.reward_from is not None or output_path(cfg, "rm").exists()


def _reward_inputs(cfg: RLHFConfig) -> dict[str, str]:
    return {f"reward:{role}": path for role, path in reward_models(cfg, require=False).items()}


def _compare_inputs(cfg: RLHFConfig) -> dict[str, str]:
    """Compare's policies, and the reward models its bon:<n> picks by when reward= is not the judge."""
    policies = {f"policy:{name}": spec for name, spec in sorted(compare_policies(cfg, require=False).items())}
    return {**policies, **(_reward_inputs(cfg) if cfg.reward.source != "model" or cfg.reward.add else {})}


def _evaluate_has_rm(cfg: RLHFConfig) -> bool:
    """evaluate measures the reward model given, or this run's; without one, only policies."""
    return cfg.evaluate.reward_from is not None or output_path(cfg, "rm").exists()


def _previous_policy(cfg: RLHFConfig) -> Optional[str]:
    return cfg.loop.policy_stage


def _policy_from_previous(cfg: RLHFConfig) -> Optional[str]:
    return cfg.loop.policy_stage if cfg.loop.policy_from == "previous" else None


def _rm_from_previous(cfg: RLHFConfig) -> Optional[str]:
    return "rm" if cfg.loop.rm_from == "previous" else None


def _collected_inputs(cfg: RLHFConfig) -> dict[str, str]:
    return {f"collected:round_{n}": str(path) for n, path in collected_files(cfg).items()} if cfg.rm.use_collected \
        else {}


def _collect_inputs(cfg: RLHFConfig) -> dict[str, str]:
    return {f"mix_with_{i}": path for i, path in enumerate(cfg.collect.mix_with)}


def _evaluate_policies(cfg: RLHFConfig) -> dict[str, str]:
    return {f"policy:{name}": spec for name, spec in sorted((cfg.evaluate.policies or {}).items())}


_REGISTERED = (
    Stage("prepare", "rlhf.stages.prepare", "load, validate, split and tokenize the data; print the summary",
          "prepare"),
    Stage("sft", "rlhf.stages.sft", "stage 1: supervised fine-tuning on demonstrations", "sft",
          inputs=(Input("init_from", base_model=True),), output="final", produces_policy=True, in_pipeline=True,
          rounds="first"),
    Stage("collect", "rlhf.stages.collect", "a policy's answers to rank (the previous round's; in round 1 "
          "the SFT policy's), by a simulated labeller or a person: the next reward model's comparisons", "collect",
          inputs=(Input("policy", produced_by="sft", previous_round=_previous_policy),),
          # round 1 collects only when named (stages=[sft,collect,rm,...]: data with prompts and no
          # comparisons, the SFT policy's answers ranked by the verifier, experiment=smollm2_ifeval)
          output="comparisons.jsonl", in_pipeline=True, default_rounds="later", dynamic_inputs=_collect_inputs),
    Stage("rm", "rlhf.stages.reward_model", "stage 2: reward model on pairwise and K-wise comparisons", "rm",
          inputs=(Input("init_from", produced_by="sft", previous_round=_rm_from_previous),), output="final",
          in_pipeline=True, dynamic_inputs=_collected_inputs),
    Stage("ppo", "rlhf.stages.online_rl.loop", "stage 3: online RL against the reward (PPO by default, algo=...)",
          "ppo", inputs=(Input("policy_from", produced_by="sft", previous_round=_policy_from_previous),
                         Input("reward_from", produced_by="rm", needed=_reads_reward_model),
                         Input("value_from", same_as=("reward_from", "policy_from"), needed=_uses_critic)),
          output="final", produces_policy=True, in_pipeline=True, also_reads=("reward",),
          dynamic_inputs=_reward_inputs),
    Stage("dpo", "rlhf.stages.dpo", "stage 3 offline: DPO (trl) on the comparisons, from the SFT policy", "dpo",
          inputs=(Input("init_from", produced_by="sft"),), output="final", produces_policy=True, in_pipeline=True,
          default_rounds="none", dynamic_inputs=_collected_inputs, also_reads=("rm",)),
    Stage("bon_sft", "rlhf.stages.bon_sft", "stage 3 offline: fine-tune the policy on its best of n answers by the "
          "reward", "bon_sft", inputs=(Input("init_from", produced_by="sft"),
                                       Input("reward_from", produced_by="rm", needed=_reads_reward_model)),
          output="final", produces_policy=True, in_pipeline=True, default_rounds="none", also_reads=("reward",),
          dynamic_inputs=_reward_inputs),
    Stage("compare", "rlhf.stages.compare", "the policies side by side on held-out prompts", "compare",
          inputs=(Input("reward_from", produced_by="rm", needed=_compare_has_rm),
                  Input("reference_from", produced_by="sft"),
                  Input("bon_from", same_as=("reference_from",))),
          output="report.md", in_pipeline=True, dynamic_inputs=_compare_inputs, also_reads=("reward",)),
    Stage("generate", "rlhf.stages.generate", "print a policy's answers to prompts", "generate", writes_run=False),
    Stage("evaluate", "rlhf.stages.evaluate", "a reward model on any comparisons (accuracy, length baseline) "
          "and policies on any prompts (win rates)", "evaluate",
          inputs=(Input("reward_from", produced_by="rm", needed=_evaluate_has_rm),), output="results.json",
          dynamic_inputs=_evaluate_policies),
)
STAGES: dict[str, Stage] = {s.name: s for s in _REGISTERED}


def get(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"stage={name!r}: choose one of {', '.join([*STAGES, CHAIN])}")
    return STAGES[name]


def pipeline_stages(*, optional: bool = False, round: int = 1) -> list[str]:
    """What stage=pipeline runs by default in round `round` of the feedback loop, in order; with
    `optional`, every stage it may run (those named in `stages=` too)."""
    this = "first" if round == 1 else "later"
    return [s.name for s in STAGES.values()
            if s.in_pipeline and s.rounds in ("all", this) and (optional or s.default_rounds in ("all", this))]


def stage_dir(cfg: RLHFConfig, name: str, round: Optional[int] = None) -> Path:
    """Where stage `name` of this run writes (the stage running) or wrote, in round `round` (null:
    this one): runs/<run>[/round_<n>]/<name>, or with cfg.variant <name>@<variant> for the stage
    running and for earlier stages that this variant ran itself (else the run's own). A stage
    that later rounds do not run (sft) is read from the latest round that has it."""
    current = cfg.loop.round if round is None else round
    running = name == cfg.stage.name and current == cfg.loop.round
    searched = [current] if STAGES[name].rounds != "first" else list(range(current, 0, -1))
    for number in searched:
        base = round_dir(cfg.run_dir, number)
        if cfg.variant and (running or (base / f"{name}@{cfg.variant}").exists()):
            return base / f"{name}@{cfg.variant}"
        if running or (base / name).exists():
            return base / name
    return round_dir(cfg.run_dir, searched[-1]) / name


def rounds(cfg: RLHFConfig) -> list[int]:
    """The rounds of the feedback loop this run has folders of: 1, then each runs/<run>/round_<n>."""
    later = [int(p.name.split("_", 1)[1]) for p in cfg.run_dir.glob("round_*") if p.name.split("_", 1)[1].isdigit()]
    return [1, *sorted(n for n in later if n > 1)]


def variants(cfg: RLHFConfig, name: str, round: Optional[int] = None) -> list[Path]:
    """Every folder of stage `name` in round `round` (null: this one) that holds its output:
    <name> and the sweep points' <name>@*, in name order."""
    base = round_dir(cfg.run_dir, cfg.loop.round if round is None else round)
    found = [base / name, *sorted(base.glob(f"{name}@*"))]
    return [folder for folder in found if (folder / STAGES[name].output).exists()]


def with_collected(cfg: RLHFConfig, reader: str) -> DataConfig:
    """data= plus, with rm.use_collected, each comparisons file `rlhf stage=collect` wrote in this
    run's rounds up to this one, as a source named collected_round_<n> (format ranked): the
    comparisons the reward model and DPO read."""
    if not cfg.rm.use_collected:
        return cfg.data
    collected = [SourceConfig(name=f"collected_round_{n}", format=DataFormat.ranked, path=str(path),
                              weight=cfg.rm.collected_weight, multi_label=cfg.data.multi_label)
                 for n, path in collected_files(cfg).items()]
    for source in collected:
        log.info("%s: reading %s as source %s (weight %s)", reader, source.path, source.name, source.weight)
    return dataclasses.replace(cfg.data, sources=[*cfg.data.sources, *collected]) if collected else cfg.data


def collected_files(cfg: RLHFConfig) -> dict[int, Path]:
    """round -> the comparisons `rlhf stage=collect` wrote in that round, for rounds up to this one."""
    found = {n: output_path(cfg, "collect", n) for n in rounds(cfg) if n <= cfg.loop.round}
    return {n: path for n, path in found.items() if path.exists()}


def reward_models(cfg: RLHFConfig, *, require: bool = True) -> dict[str, str]:
    """The reward models `reward=` reads beyond a stage's own reward_from: an ensemble's members
    (`member_<i>`: reward.members, or every reward model of this run's round) and added terms'
    models (`add_<i>`). With `require`, an ensemble of fewer than two is an error that says what
    to run."""
    rc, found = cfg.reward, {}
    if rc.source == "ensemble":
        members = list(rc.members) or [str(folder / "final") for folder in variants(cfg, "rm")]
        if require and len(members) < 2:
            raise ConfigError(f"reward.source=ensemble: reward.members is empty and run {cfg.run!r} has "
                              f"{len(members)} reward model(s) ({members or 'none'}); train more with one command, "
                              f"e.g. `rlhf -m stage=rm run={cfg.run} seed=1,2,3` (each writes runs/{cfg.run}/"
                              "rm@seed=<n>), or set reward.members=[<folder>, <folder>, ...]")
        found.update({f"member_{i}": path for i, path in enumerate(members)})
    found.update({f"add_{i}": term.model for i, term in enumerate(rc.add) if term.model})
    return found


def output_path(cfg: RLHFConfig, name: str, round: Optional[int] = None) -> Path:
    return stage_dir(cfg, name, round) / STAGES[name].output


def resolve_inputs(cfg: RLHFConfig, name: str, *, require: bool = True) -> dict[str, Optional[str]]:
    """field -> the folder or hub id the stage reads (None: the tiny model, built fresh). With
    `require`, a default that another stage should have written but has not is an error that
    says which stage to run."""
    stage = STAGES[name]
    section = getattr(cfg, stage.section)
    found: dict[str, Optional[str]] = {}
    for item in stage.inputs:
        if item.needed is not None and not item.needed(cfg):
            continue
        given = getattr(section, item.field)
        if given is not None:
            found[item.field] = given
        elif item.same_as:
            found[item.field] = next(found[name] for name in item.same_as if name in found)
        elif item.base_model:
            found[item.field] = cfg.model.name_or_path
        elif cfg.loop.round > 1 and item.previous_round and item.previous_round(cfg):
            previous, earlier = item.previous_round(cfg), cfg.loop.round - 1
            path = output_path(cfg, previous, earlier)
            if require and not path.exists():
                raise ConfigError(f"{stage.section}.{item.field} is null, so {name} of round {cfg.loop.round} reads "
                                  f"round {earlier}'s {previous}: {path}, which does not exist: run `rlhf "
                                  f"stage=pipeline run={cfg.run} loop.round={earlier}` first, or set "
                                  f"{stage.section}.{item.field}=<folder or hub id>")
            found[item.field] = str(path)
        else:
            path = output_path(cfg, item.produced_by)
            if require and not path.exists():
                again = f" loop.round={cfg.loop.round}" if cfg.loop.round > 1 and path.is_relative_to(cfg.round_dir) \
                    else ""
                raise ConfigError(f"{stage.section}.{item.field} is null, so {name} reads {path}, which does not "
                                  f"exist: run `rlhf stage={item.produced_by} run={cfg.run}{again}` first, or set "
                                  f"{stage.section}.{item.field}=<folder or hub id>")
            found[item.field] = str(path)
    return found


def policy_stages() -> list[str]:
    return [s.name for s in STAGES.values() if s.produces_policy]


def compare_policies(cfg: RLHFConfig, *, require: bool = True) -> dict[str, str]:
    """compare.policies, or by default: the base model (when model.name_or_path names one), this
    run's policies that exist (every stage that produces one, and every point of its sweeps,
    named by folder: ppo, ppo@algo=grpo, ...; a later round's as round_<n>/ppo), and bon:4 when
    a reward model judges or reward= names another source to pick its answers by."""
    c = cfg.compare
    if c.policies:
        return dict(c.policies)
    # the base model, unless this run's SFT policy is that model itself (sft.adopt)
    policies = {"base": cfg.model.name_or_path} if cfg.model.name_or_path and not cfg.sft.adopt else {}
    for number in rounds(cfg):
        prefix = "" if number == 1 else f"round_{number}/"
        for name in policy_stages():
            for folder in variants(cfg, name, number):  # the stage's own folder and its sweep points'
                policies[prefix + folder.name] = str(folder / STAGES[name].output)
    if require and "sft" not in policies:
        raise ConfigError(f"compare.policies is empty, so compare uses this run's stages, but "
                          f"{output_path(cfg, 'sft')} does not exist: run `rlhf stage=sft run={cfg.run}` first, or "
                          "set compare.policies")
    if _compare_has_rm(cfg) or cfg.reward.source != "model":
        policies["bon:4"] = "bon:4"
    if require and c.baseline not in policies:
        raise ConfigError(f"compare.baseline={c.baseline!r} is not among the default policies {list(policies)}")
    return policies


def latest_policy(cfg: RLHFConfig) -> str:
    """generate's default: the policy of the last stage (in pipeline order) that wrote one in this
    run's latest round that has one, else the base model."""
    for number in reversed(rounds(cfg)):
        for name in reversed(policy_stages()):
            if output_path(cfg, name, number).exists():
                return str(output_path(cfg, name, number))
    if cfg.model.name_or_path:
        return cfg.model.name_or_path  # the base model, before any stage ran
    written = " or ".join(f"{n}/{STAGES[n].output}" for n in reversed(policy_stages()))
    raise ConfigError(f"generate.policy is null and run {cfg.run!r} has no {written} in {cfg.run_dir}: "
                      f"set generate.policy=<folder or hub id>, or train with `rlhf stage=sft run={cfg.run}`")
