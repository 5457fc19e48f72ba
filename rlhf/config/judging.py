"""The configs of the stages that look at models without training them (`compare.`,
`generate.`, `evaluate.`). Part of the schema (rlhf/config/schema.py re-exports them), apart
from it as the data layer's configs are, to keep the schema readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from rlhf.config.answers import AnswerLengthConfig


@dataclass
class CompareConfig(AnswerLengthConfig):
    """`rlhf stage=compare`: policies side by side on held-out prompts (rlhf/stages/compare/)."""

    # name -> checkpoint folder, hub id, or "bon:<n>": the best of n samples of `bon_from`, picked
    # by the reward source (reward=; for reward=model the judging RM). null = this run's policies
    # (sft, ppo, dpo, bon_sft: those that exist, and their sweeps' points ppo@..., named by
    # folder), bon:4 when a reward model judges or reward= names another source, and the base
    # model when model.name_or_path names one.
    # On the command line:
    # compare.policies='{sft: runs/a/sft/final, ppo_b: runs/b/ppo/final, bon8: "bon:8"}'
    policies: Any = None  # a dict, or null (typed Any: Hydra cannot merge a new dict into a typed one)
    baseline: str = "sft"  # win rates are each policy's against this one
    reward_from: Optional[str] = None  # the judging RM; null = runs/<run>/rm/final, or none (gold scorer only) without one
    reference_from: Optional[str] = None  # KL is measured to this policy; null = runs/<run>/sft/final
    bon_from: Optional[str] = None  # the policy bon:<n> samples from; null = reference_from
    prompts: int = 256  # held-out prompts, the first of the eval split
    samples_per_prompt: int = 4  # sampled answers per prompt and policy (seeds seed, seed+1, ...)
    modes: List[str] = field(default_factory=lambda: ["sampled", "greedy"])
    temperature: float = 1.0  # of the sampled mode
    batch_size: int = 64  # prompts per generation batch
    bootstrap_resamples: int = 1000  # confidence intervals: resampling prompts with replacement
    confidence: float = 0.95
    examples: int = 3  # prompts shown side by side in report.md
    ppo_logs: Optional[str] = None  # TensorBoard logs for training curves; null = runs/<run>/ppo/logs
    from_results: Optional[str] = None  # a results.json: rebuild report.md and plots, no sampling


@dataclass
class GenerateConfig:
    """`rlhf stage=generate`: print a policy's answers (rlhf/stages/generate.py)."""

    policy: Optional[str] = None  # folder or hub id; null = this run's policy of the latest stage in pipeline order (bon_sft, dpo, ppo, sft), else the base model
    prompt: Optional[str] = None  # one prompt; with neither this nor prompts_file, read prompts from stdin
    prompts_file: Optional[str] = None  # a text file, one prompt per line
    num_samples: int = 1  # answers per prompt
    # null = as the model's generation_config.json says (transformers' rule: greedy unless it sets
    # do_sample; its temperature when it samples); true/false to choose
    greedy: Optional[bool] = None
    temperature: Optional[float] = None  # sampling only; null = the model's, else 1.0
    # null = the model's generation_config max_new_tokens, else data.max_response_tokens where the
    # data is the model's own task (any data but the toy task, or the toy with the tiny model),
    # else 256: a pretrained model asked a question on the toy config is not held to toy lengths
    max_new_tokens: Optional[int] = None


@dataclass
class EvaluateConfig(AnswerLengthConfig):
    """`rlhf stage=evaluate` (rlhf/stages/evaluate.py): a reward model on comparisons, or
    policies on prompts, from any data source (`data=...`, `data.path=...`), without training."""

    # The reward model measured on the source's comparisons (accuracy by source and by K, ties,
    # margins, the length baseline) and the judge of the policies' answers; null =
    # runs/<run>/rm/final when it exists
    reward_from: Optional[str] = None
    # name -> folder or hub id: policies that answer the source's prompts, judged as compare
    # judges (RM score, gold on the toy task, win rates against `baseline` with intervals);
    # null or {} = measure the reward model only
    policies: Any = None
    baseline: Optional[str] = None  # a name of `policies`; null = the first
    # Which records: all of them (a file kept for evaluation), or one split's (sft, rm, ppo, eval)
    split: str = "all"
    max_comparisons: Optional[int] = None  # the first N comparisons; null = all
    prompts: int = 256  # the first N prompts the policies answer
    samples_per_prompt: int = 1
    temperature: float = 1.0
    greedy: bool = False
    batch_size: int = 32  # comparisons or prompts per forward/generation batch
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
