"""Structured configs: the one place where every option is defined and documented.

Hydra composes `conf/config.yaml` on top of `RLHFConfig` (registered as the schema
`rlhf_schema`), so an unknown key or a value of the wrong type fails at composition with the
full key named. `rlhf/checks/` (at the entry layer: the rules read the registries above this
one) registers the schema, turns the composed config into these dataclasses and adds the
cross-field rules that a type cannot express. The YAML files under conf/ only hold choices that
differ from the defaults below. The stages themselves, and the order the pipeline runs them in,
are listed once, in the stage registry (rlhf/stages/), which also makes the `stage=` options.
Four groups live beside it and are re-exported here: data.py (`data.`), loop.py (`collect.`,
`loop.`), judging.py (`compare.`, `generate.`, `evaluate.`) and online_rl.py (`ppo.`, `vllm.`);
answers.py holds what the stages that sample answers share (max_new_tokens, gold_eval_prompts).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from rlhf.core.errors import ConfigError  # noqa: F401  (re-exported: rlhf.config.ConfigError)
from rlhf.config.loop import CollectConfig, LoopConfig  # noqa: F401  (part of the schema, as data.py)
from rlhf.config.judging import CompareConfig, EvaluateConfig, GenerateConfig  # noqa: F401
from rlhf.config.online_rl import PPOStageConfig, VLLMConfig  # noqa: F401
from rlhf.config.answers import AnswerLengthConfig, GoldEvalConfig  # noqa: F401  (part of the schema)
from rlhf.config.data import (  # noqa: F401  (part of the schema; imported from here too)
    SPLITS,
    DataConfig,
    DataFormat,
    FieldMap,
    MultiLabel,
    OasstConfig,
    OnError,
    SourceConfig,
    SplitConfig,
    ToyConfig,
    Truncate,
)


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
    # Recompute activations in the backward pass instead of keeping them: less memory, about a
    # third more compute. Every training stage (SFT, RM, DPO, bon_sft, stage 3's policy and
    # critic), with or without DeepSpeed and LoRA; never in generation, which keeps its KV cache.
    gradient_checkpointing: bool = False
    # The attention kernel: sdpa (PyTorch's fused attention, on every device), eager (plain
    # matrix products; for debugging), or flash_attention_2 (CUDA, bf16/fp16, needs the
    # flash-attn package: pip install flash-attn --no-build-isolation).
    attn_implementation: str = "sdpa"
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
    # Batches of examples of similar length (transformers' length-grouped sampler: random
    # mega-batches, sorted within), so that little compute goes to padding on real data
    group_by_length: bool = False
    dropout: float = 0.0  # every dropout probability the model config has (InstructGPT SFT: 0.2)
    eval_every_steps: int = 100  # eval-split loss every N optimizer steps (0: only at the end)
    save_every_steps: int = 500  # checkpoints in <stage>/checkpoints every N steps (0: none)
    save_total_limit: int = 2  # keep only the newest N checkpoints
    # A non-finite loss or gradient norm stops the run before the optimizer steps (the last
    # checkpoint kept, exit 4); true skips that batch instead, counted in the metrics.
    skip_nonfinite: bool = False


@dataclass
class SFTStageConfig(GoldEvalConfig, TrainConfig):
    """Stage 1. init_from null = model.name_or_path (the tiny model: freshly built)."""

    packing: bool = False  # concatenate examples into full sequences (trl's BFD packing)
    # No training: the starting model (init_from, or the base model) is written as this run's SFT
    # policy unchanged, for a model already instruction-tuned on data without demonstrations
    # (experiment=smollm2_ifeval: SmolLM2-135M-Instruct as the SFT policy of prompt-only data)
    adopt: bool = False


@dataclass
class RMStageConfig(TrainConfig):
    """Stage 2. init_from null = runs/<run>/sft/final."""

    # After training, shift scores so the sft split's demonstrations score mean 0 (InstructGPT).
    normalize: bool = True
    normalize_max_demonstrations: int = 2048  # demonstrations scored to estimate mean and std
    # The comparisons `rlhf stage=collect` wrote in this run's rounds up to this one (each file a
    # source of its own, `collected_round_<n>`, beside data=): InstructGPT's rounds. Their
    # weight as data.sources' weight: 2 = each record twice. false: data= alone.
    use_collected: bool = True
    collected_weight: float = 1.0
    # Toy task: accuracy on pairs (exact answer, the same answer with one digit wrong) built from
    # this many eval-split prompts: the blind spot stage 3 learns to exploit (0: skip)
    wrong_digit_pairs: int = 512


@dataclass
class DPOStageConfig(GoldEvalConfig, TrainConfig):
    """`rlhf stage=dpo` (rlhf/stages/dpo.py): trl's DPOTrainer on the rm split's comparisons.
    init_from null = runs/<run>/sft/final, which is also the frozen reference."""

    # How a K-wise ranking becomes pairs: all = every better-worse pair (C(K,2), ties dropped);
    # best = the best response against each of the others (K - 1 pairs)
    pairs: str = "all"
    beta: float = 0.1  # strength of the pull towards the reference (IPO: its regularisation parameter)
    loss_type: str = "sigmoid"  # trl's DPOConfig.loss_type: sigmoid (DPO), ipo, hinge, robust, ...
    label_smoothing: float = 0.0  # robust / cDPO: the probability that a label is flipped
    # + this x the chosen responses' LM loss (trl's "sft" loss beside loss_type; RPO, Pang et al.
    # 2024): keeps the chosen answers likely while the margin grows; 0 = plain loss_type
    sft_loss_coef: float = 0.0
    learning_rate: float = 1e-6
    # Implicit-reward accuracy on this many train pairs after training (0: skip)
    train_accuracy_pairs: int = 256


@dataclass
class BonSFTStageConfig(GoldEvalConfig, TrainConfig):
    """`rlhf stage=bon_sft` (rlhf/stages/bon_sft.py): best-of-n distillation (rejection-sampling
    fine-tuning): n answers per prompt of the ppo split from the policy, the one the reward source
    (`reward=`) scores best kept, and the policy fine-tuned on those picks as SFT trains.
    max_new_tokens is the n answers' length as well as the gold evaluation's.
    init_from null = runs/<run>/sft/final."""

    reward_from: Optional[str] = None  # null = runs/<run>/rm/final; reward.source=model only
    n: int = 4  # answers sampled per prompt
    prompts: Optional[int] = None  # the ppo split's first N prompts; null = all of them
    rounds: int = 1  # > 1: sample again from the last round's policy and fine-tune it on the new picks
    temperature: float = 1.0
    generation_batch_size: int = 64  # prompts per sampling batch
    learning_rate: float = 1e-5


@dataclass
class RewardTerm:
    """A weighted term added to stage 3's reward (reward.add): a reward model or a function."""

    weight: float = 1.0
    model: Optional[str] = None  # a reward-model folder (normalised as its RM stage saved it)
    function: Optional[str] = None  # or "package.module:callable" (prompt, response) -> float


@dataclass
class RewardConfig:
    """Stage 3's reward source (conf/reward/), and what compare's bon:<n> and bon_sft pick by.
    `model`: the reward model of ppo.reward_from with its saved normalisation. `function`: a
    Python callable (prompt, response) -> float named `module:name`, e.g. the toy task's gold
    scorer (reward=toy_gold) or an exact-match check; a callable that raises or returns a
    non-finite number stops the run naming the prompt. `ensemble`: several reward models (e.g.
    one per seed: `rlhf -m stage=rm seed=1,2,3` beside this run's rm), each normalised first,
    combined as the mean or as mean - std_coef x std (Coste et al. 2023). `verifier`: the checks
    of the prompts' verifiable instructions (data=ifeval), as IFEval scores them. A function's
    code is imported, so name only code you trust. rlhf/sampling/reward.py has the sources."""

    source: str = "model"  # model | function | ensemble | verifier
    function: Optional[str] = None  # source=function: "package.module:callable"
    # source=ensemble: the members' folders; empty = every reward model of this run: runs/<run>/rm/final
    # and its sweep points' runs/<run>/rm@*/final
    members: List[str] = field(default_factory=list)
    combine: str = "mean"  # ensemble: mean | mean_minus_std (uncertainty-penalised)
    std_coef: float = 1.0  # ensemble, mean_minus_std: the lambda of mean - lambda x std across members
    # verifier: strict (the answer as written) | loose (IFEval's loose reading: also with its first
    # or last line or markdown asterisks removed, so a preamble is forgiven)
    check: str = "strict"
    # verifier: all (1 when every instruction of the prompt is followed, else 0: IFEval's prompt-level
    # accuracy) | fraction (the share of the prompt's instructions followed: partial credit)
    credit: str = "all"
    weight: float = 1.0  # the source's weight when reward.add sums other terms with it
    # more weighted terms summed with the source, e.g. a format check:
    # reward.add='[{function: mypackage.checks:format_ok, weight: 0.5}]'
    add: List[RewardTerm] = field(default_factory=list)


@dataclass
class StageConfig:
    name: str = "prepare"  # which stage `rlhf` runs: a name of the stage registry (`rlhf --list-stages`) or pipeline


@dataclass
class PrepareConfig:
    examples_per_split: int = 1  # formatted examples printed per split, to eyeball the template


@dataclass
class RLHFConfig:
    run: str = "default"  # run name: outputs go to <runs_dir>/<run>/<stage>/
    runs_dir: str = "runs"
    seed: int = 0
    # One configuration of a run's stages beside the others, e.g. one point of a sweep: its
    # stages write runs/<run>/<stage>@<variant>/ and read an earlier stage's <stage>@<variant>
    # where it exists, else the run's <stage> (so a sweep of stage=ppo shares the run's sft and
    # rm). Every point of a multirun (`rlhf -m ...`) is given one from the overrides the sweep
    # varies, e.g. ppo@algo=grpo,seed=1, so no point overwrites another. null = runs/<run>/<stage>/
    variant: Optional[str] = None
    stage: StageConfig = field(default_factory=StageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rm: RMStageConfig = field(default_factory=RMStageConfig)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    bon_sft: BonSFTStageConfig = field(default_factory=BonSFTStageConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    # stage=pipeline: the stages it runs, in the registry's order (`rlhf --list-stages`; null = all
    # of them); each is skipped when its output exists with the same settings and inputs
    # (rlhf/lineage.py).
    stages: Optional[List[str]] = None

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run

    @property
    def round_dir(self) -> Path:
        """runs/<run> for round 1, runs/<run>/round_<n> for a later round of the feedback loop."""
        return round_dir(self.run_dir, self.loop.round)

    @property
    def stage_dir(self) -> Path:
        """runs/<run>[/round_<n>]/<stage>[@<variant>]: the same on every rank (no timestamp)."""
        return self.round_dir / (f"{self.stage.name}@{self.variant}" if self.variant else self.stage.name)


def round_dir(run_dir: Path, number: int) -> Path:
    return run_dir if number == 1 else run_dir / f"round_{number}"
