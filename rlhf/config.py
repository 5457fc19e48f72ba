"""Structured configs: the one place where every option is defined and documented.

Hydra composes `conf/config.yaml` on top of `RLHFConfig` (registered as the schema
`rlhf_schema`), so an unknown key or a value of the wrong type fails at composition with the
full key named. `check()` adds the cross-field rules that a type cannot express. The YAML files
under conf/ only hold choices that differ from the defaults below.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

STAGES = ("prepare", "sft", "rm", "ppo", "compare", "generate")  # cli.py maps names to modules
SPLITS = ("sft", "rm", "ppo", "eval")


class ConfigError(ValueError):
    """A config that composes but cannot run; the message names every field involved."""


class DataFormat(enum.Enum):
    """How the rows of a data source map onto records (see data/README.md for each format)."""

    toy = "toy"  # the built-in generator; no file
    demonstration = "demonstration"  # prompt, response -> Demonstration
    messages = "messages"  # chat messages ending in an assistant turn -> Demonstration
    pairwise = "pairwise"  # prompt, chosen, rejected (+ margin) -> Comparison with K=2
    ranked = "ranked"  # prompt, responses ranked best-first (OASST-style) -> K-wise Comparison
    hh_rlhf = "hh_rlhf"  # Anthropic HH-RLHF chosen/rejected transcripts -> Comparison
    oasst = "oasst"  # OpenAssistant message trees (one message a row) -> K-wise Comparisons of ranked replies
    prompt = "prompt"  # prompt only -> Prompt (PPO / eval prompts)


# What to do with a bad record. raise: stop at the first one with an error naming it;
# skip: drop bad records, count them by reason and report the counts. (Built with the functional
# API because OmegaConf matches enum *names* and `raise` is a Python keyword.)
OnError = enum.Enum("OnError", {"raise": "raise", "skip": "skip"})


@dataclass
class FieldMap:
    """Column names in the source rows (`data.fields.prompt=question` for a dataset that calls
    its prompt column `question`). Dotted names reach into nested objects (`meta.question`)."""

    prompt: str = "prompt"
    response: str = "response"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: str = "margin"  # optional column; absent or null means no margin
    responses: str = "responses"  # ranked format: list of strings best-first, or of objects
    response_text: str = "text"  # ranked format, object elements: the text key
    response_rank: str = "rank"  # ranked format, object elements: rank key (0 = best; equal = tie)
    messages: str = "messages"  # messages format
    message_id: str = "message_id"  # oasst format: the message's id, its parent's, and its author
    parent_id: str = "parent_id"
    role: str = "role"  # "prompter" or "assistant"


@dataclass
class SplitConfig:
    """Fractions of prompts per split, assigned by a hash of the prompt (not its position), so a
    prompt lands in the same split on every run, rank and machine."""

    sft: float = 0.4
    rm: float = 0.3
    ppo: float = 0.2
    eval: float = 0.1
    salt: str = "rlhf-v1"  # changing it reshuffles every prompt; keep it fixed across stages
    # Splits listed here get the same prompts (e.g. [sft, rm] trains SFT and RM on one set of
    # prompts, as many public recipes do); their fractions must be equal. Empty: no prompt lands
    # in two splits.
    shared: List[str] = field(default_factory=list)


@dataclass
class ToyConfig:
    """The built-in task (data/README.md): sort a short list of digits as instructed."""

    seed: int = 0
    num_prompts: int = 12000
    tasks: List[str] = field(default_factory=lambda: ["ascending", "descending"])  # or "reverse"
    min_items: int = 3
    max_items: int = 6
    flawed_fraction: float = 0.3  # share of demonstrations with one deliberate flaw
    responses_per_comparison: int = 4  # K of each K-wise comparison
    label_noise: float = 0.1  # chance that a comparison's ranking has one adjacent pair swapped


@dataclass
class DataConfig:
    name: str = "toy"  # label used in manifests and per-source metrics
    format: DataFormat = DataFormat.toy
    # Where records come from: `path` (a local jsonl/json/parquet/csv file, .gz allowed, or a
    # folder of such files) or `hub_id` (datasets.load_dataset). `path` wins when both are set
    # so that a hub dataset config can be pointed at a local copy with data.path=...
    path: Optional[str] = None
    hub_id: Optional[str] = None
    hub_name: Optional[str] = None  # the dataset's config name (load_dataset's `name`)
    hub_data_dir: Optional[str] = None  # a folder inside the dataset repo (HH: harmless-base)
    hub_split: str = "train"
    hub_revision: Optional[str] = None
    fields: FieldMap = field(default_factory=FieldMap)
    on_error: OnError = OnError["raise"]
    max_records: Optional[int] = None  # read at most this many rows (quick trials); null = all
    # Comparisons also give their best (untied) response as a demonstration, so that preference
    # data alone can feed SFT ("SFT on chosen"). Off for data that has its own demonstrations.
    demonstrations_from_comparisons: bool = False
    max_prompt_tokens: int = 256  # formatted prompt, chat template included
    max_response_tokens: int = 128  # response tokens including the closing EOS
    splits: SplitConfig = field(default_factory=SplitConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)


@dataclass
class TinyModelConfig:
    """Shape of the built-in Llama-style model, built from this config (no download)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 2048  # rotary positions: no parameters, so generous is free
    seed: int = 0  # initial weights


@dataclass
class LoraConfig:
    """LoRA adapters (peft) instead of full fine-tuning, in every training stage. The RM's and the
    critic's score head trains in full; PPO's reference is the policy with its adapter switched
    off (no second copy). A stage's `final/` is the merged plain checkpoint the next stage
    loads; the adapter alone goes to `final_adapter/`."""

    enabled: bool = False
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator: updates are scaled by alpha / r
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # peft's name, or a list of module names such as [q_proj, v_proj]


@dataclass
class ModelConfig:
    # A hub id or local folder in Hugging Face format; null builds the tiny model.
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    # Off by default: loading a model must not run code from its repository unless asked.
    trust_remote_code: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # Jinja chat template that replaces the tokenizer's own; null keeps the tokenizer's, and a
    # tokenizer without one uses the plain template of rlhf/data/formatting.py.
    chat_template: Optional[str] = None
    # A GGUF file shipped inside a pip package (model=smollm2_135m_offline): converted once into
    # a Hugging Face folder in ~/.cache/rlhf/models ($RLHF_CACHE), which becomes name_or_path.
    gguf_package: Optional[str] = None
    gguf_file: Optional[str] = None
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DeepSpeedConfig:
    name: str = "none"
    # The DeepSpeed JSON config as a mapping ("auto" where the HF integration fills a value).
    config: Dict[str, Any] = field(default_factory=dict)


class LoggerBackend(enum.Enum):
    tensorboard = "tensorboard"  # event files in runs/<run>/<stage>/logs (tensorboard --logdir runs)
    wandb = "wandb"  # Weights & Biases (pip install wandb; WANDB_MODE=offline works without network)
    none = "none"  # metrics only in the console, rlhf.log and manifest.json


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend.tensorboard
    wandb_project: str = "rlhf"  # wandb only; the wandb run is named <run>/<stage>
    every_steps: int = 10  # optimizer steps between logged training metrics


@dataclass
class TrainConfig:
    """Optimisation settings shared by the trainer-based stages (SFT, RM)."""

    # Start from this checkpoint (local folder or hub id); null = the stage's default (see stage).
    init_from: Optional[str] = None
    epochs: float = 1.0
    max_steps: int = -1  # > 0 stops after this many optimizer steps, overriding epochs
    per_device_batch_size: int = 32  # examples per device per micro-step (RM: comparisons)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine"  # any transformers scheduler name (linear, constant, ...)
    warmup: float = 0.05  # < 1: fraction of the steps; >= 1: a number of steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # global gradient clipping
    dropout: float = 0.0  # every dropout probability the model config has (InstructGPT SFT: 0.2)
    eval_every_steps: int = 100  # eval-split loss every N optimizer steps (0: only at the end)
    save_every_steps: int = 500  # checkpoints in <stage>/checkpoints every N steps (0: none)
    save_total_limit: int = 2  # keep only the newest N checkpoints


@dataclass
class SFTStageConfig(TrainConfig):
    """Stage 1. init_from null = model.name_or_path (the tiny model: freshly built)."""

    packing: bool = False  # concatenate examples into full sequences (trl's BFD packing)
    # Toy task only: gold score of generations on this many eval prompts after training.
    gold_eval_prompts: int = 256
    max_new_tokens: Optional[int] = None  # gold evaluation's generation length; null = data.max_response_tokens


@dataclass
class RMStageConfig(TrainConfig):
    """Stage 2. init_from null = runs/<run>/sft/final."""

    # After training, shift scores so the sft split's demonstrations score mean 0 (InstructGPT).
    normalize: bool = True
    normalize_max_demonstrations: int = 2048  # demonstrations scored to estimate mean and std


@dataclass
class PPOStageConfig:
    """Stage 3 (rlhf/ppo/). Names follow InstructGPT and Huang et al. 2024."""

    policy_from: Optional[str] = None  # null = runs/<run>/sft/final; also the frozen reference
    reward_from: Optional[str] = None  # null = runs/<run>/rm/final (with its normalisation)
    value_from: Optional[str] = None  # null = reward_from: the critic starts as the reward model
    updates: int = 100  # rollout-then-optimise rounds
    rollout_batch_size: int = 64  # prompts sampled per update (one response each)
    mini_batch_size: int = 32  # episodes per optimizer step; must divide rollout_batch_size
    # episodes per forward (rollout scoring) and forward/backward pass (training); null =
    # mini_batch_size. Lower it to save activation memory: gradients accumulate, so the optimizer
    # step is the same. Must divide mini_batch_size.
    micro_batch_size: Optional[int] = None
    ppo_epochs: int = 4  # passes over each rollout batch
    learning_rate: float = 1e-5  # policy
    value_learning_rate: Optional[float] = None  # null = learning_rate
    max_grad_norm: float = 1.0  # global clipping, policy and value each
    # sampling (top_k 0, top_p 1: the policy's own distribution, as PPO's math assumes)
    temperature: float = 1.0
    max_new_tokens: Optional[int] = None  # null = data.max_response_tokens
    no_eos_score: float = -5.0  # RM score given to a response that never emitted EOS (normalised units)
    # reward = RM score on the last token - beta * KL per token
    kl_estimator: str = "k1"  # k1 | k3
    beta: float = 0.02  # InstructGPT's KL coefficient
    kl_target: Optional[float] = None  # set (e.g. 6.0 nats) for Ziegler's adaptive beta
    kl_horizon: int = 10000
    whiten_rewards: bool = False  # normalise the per-token rewards of each batch (mean kept)
    score_clip: Optional[float] = None  # clip RM scores to +-this before use
    # advantages and losses
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    critic_warmup_updates: int = 0  # train only the value model for the first N updates
    # PPO-ptx: + ptx_coef x LM loss on the sft split's demonstrations (InstructGPT: 27.8); 0 = off
    ptx_coef: float = 0.0
    ptx_batch_size: int = 16
    ema_decay: Optional[float] = None  # e.g. 0.992 (InstructGPT): save an EMA of the policy weights
    # evaluation and checkpoints
    eval_every_updates: int = 10  # gold score / RM score on eval prompts (0: start and end only)
    eval_prompts: int = 256
    save_every_updates: int = 50  # resumable checkpoint in <stage>/checkpoints (0: only at the end)


@dataclass
class CompareConfig:
    """`rlhf stage=compare`: policies side by side on held-out prompts (rlhf/compare.py)."""

    # name -> checkpoint folder, hub id, or "bon:<n>": the best of n samples of `bon_from`, picked
    # by the reward model. null = this run's sft and ppo policies (those that exist), bon:4, and
    # the base model when model.name_or_path names one. On the command line:
    # compare.policies='{sft: runs/a/sft/final, ppo_b: runs/b/ppo/final, bon8: "bon:8"}'
    policies: Any = None  # a dict, or null (typed Any: Hydra cannot merge a new dict into a typed one)
    baseline: str = "sft"  # win rates are each policy's against this one
    reward_from: Optional[str] = None  # the judging RM; null = runs/<run>/rm/final
    reference_from: Optional[str] = None  # KL is measured to this policy; null = runs/<run>/sft/final
    bon_from: Optional[str] = None  # the policy bon:<n> samples from; null = reference_from
    prompts: int = 256  # held-out prompts, the first of the eval split
    samples_per_prompt: int = 4  # sampled answers per prompt and policy (seeds seed, seed+1, ...)
    modes: List[str] = field(default_factory=lambda: ["sampled", "greedy"])
    temperature: float = 1.0  # of the sampled mode
    max_new_tokens: Optional[int] = None  # null = data.max_response_tokens
    batch_size: int = 64  # prompts per generation batch
    bootstrap_resamples: int = 1000  # confidence intervals: resampling prompts with replacement
    confidence: float = 0.95
    examples: int = 3  # prompts shown side by side in report.md
    ppo_logs: Optional[str] = None  # TensorBoard logs for training curves; null = runs/<run>/ppo/logs
    from_results: Optional[str] = None  # a results.json: rebuild report.md and plots, no sampling


@dataclass
class GenerateConfig:
    """`rlhf stage=generate`: print a policy's answers (rlhf/generate.py)."""

    policy: Optional[str] = None  # folder or hub id; null = runs/<run>/ppo/final, else sft/final
    prompt: Optional[str] = None  # one prompt; with neither this nor prompts_file, read prompts from stdin
    prompts_file: Optional[str] = None  # a text file, one prompt per line
    num_samples: int = 1  # answers per prompt
    greedy: bool = False
    temperature: float = 1.0
    max_new_tokens: Optional[int] = None  # null = data.max_response_tokens


@dataclass
class StageConfig:
    name: str = "prepare"  # which stage `rlhf` runs: one of STAGES


@dataclass
class PrepareConfig:
    examples_per_split: int = 1  # formatted examples printed per split, to eyeball the template


@dataclass
class RLHFConfig:
    run: str = "default"  # run name: outputs go to <runs_dir>/<run>/<stage>/
    runs_dir: str = "runs"
    seed: int = 0
    stage: StageConfig = field(default_factory=StageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rm: RMStageConfig = field(default_factory=RMStageConfig)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run

    @property
    def stage_dir(self) -> Path:
        """runs/<run>/<stage>: the same on every rank, as it holds no timestamp."""
        return self.run_dir / self.stage.name


def register_schemas() -> None:
    ConfigStore.instance().store(name="rlhf_schema", node=RLHFConfig)


def to_config(composed: DictConfig) -> RLHFConfig:
    """The typed config. Hydra already rejects unknown keys and wrong types, except keys added
    with `+key=value`, which pass into structured nodes silently; those are refused here."""
    unknown = _unknown_keys(composed, RLHFConfig, "")
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}. Check the spelling; every "
                          "field is defined and documented in rlhf/config.py")
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
    problems: list[str] = []

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.run):
        problems.append(f"run={cfg.run!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    if cfg.stage.name not in STAGES:
        problems.append(f"stage.name={cfg.stage.name!r}: choose one of {', '.join(STAGES)}")

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
        from rlhf.data.toy import TASKS  # local import: config must not pull in the data layer

        bad_tasks = [x for x in t.tasks if x not in TASKS]
        if bad_tasks or not t.tasks:
            problems.append(f"data.toy.tasks={t.tasks}: choose one or more of {sorted(TASKS)}")
    elif not d.path and not d.hub_id:
        problems.append(f"data.format={d.format.value} reads records: set data.path (a local file) "
                        "or data.hub_id (a Hugging Face dataset)")
    if d.max_records is not None and d.max_records < 1:
        problems.append(f"data.max_records={d.max_records}: must be >= 1 (or null for all)")
    for name in ("max_prompt_tokens", "max_response_tokens"):
        if getattr(d, name) < 1:
            problems.append(f"data.{name}={getattr(d, name)}: must be >= 1")

    m = cfg.model
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

    for name in ("sft", "rm"):
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

    p = cfg.ppo
    if p.mini_batch_size < 1 or p.rollout_batch_size % p.mini_batch_size:
        problems.append(f"ppo.rollout_batch_size={p.rollout_batch_size} must be divisible by "
                        f"ppo.mini_batch_size={p.mini_batch_size}")
    if p.micro_batch_size is not None and (p.micro_batch_size < 1 or p.mini_batch_size % p.micro_batch_size):
        problems.append(f"ppo.mini_batch_size={p.mini_batch_size} must be divisible by "
                        f"ppo.micro_batch_size={p.micro_batch_size} (or set it to null)")
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
    if p.kl_estimator not in ("k1", "k3"):
        problems.append(f"ppo.kl_estimator={p.kl_estimator!r}: choose k1 or k3")
    if p.ema_decay is not None and not 0.0 < p.ema_decay < 1.0:
        problems.append(f"ppo.ema_decay={p.ema_decay}: must lie in (0, 1), or null for no EMA")
    if p.temperature <= 0:
        problems.append(f"ppo.temperature={p.temperature}: must be > 0")
    if p.max_new_tokens is not None and p.max_new_tokens > cfg.data.max_response_tokens:
        problems.append(f"ppo.max_new_tokens={p.max_new_tokens} exceeds data.max_response_tokens="
                        f"{cfg.data.max_response_tokens}, the longest response the SFT and RM saw")

    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _bucket_total(fractions: dict[str, float], shared: list[str]) -> float:
    """Share of the prompt space the splits use; shared splits use one bucket together."""
    if len(shared) < 2:
        return sum(fractions.values())
    return sum(v for k, v in fractions.items() if k not in shared) + max(fractions[s] for s in shared)
