"""The feedback loop's configs (`collect.` and `loop.`; docs/collect.md): collecting answers to
rank and the rounds. Part of the schema (rlhf/config/schema.py re-exports both), apart from it as
the data layer's configs are, to keep the schema readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from rlhf.config.answers import AnswerLengthConfig


@dataclass
class CollectConfig(AnswerLengthConfig):
    """`rlhf stage=collect` (rlhf/stages/collect.py): answers of the current policy to rank, the
    data of the next round's reward model (InstructGPT's feedback loop)."""

    # The policy that answers (folder or hub id); null = the previous round's `loop.policy_stage`
    # (in round 1: this run's sft policy)
    policy: Optional[str] = None
    # More policies mixed in, as InstructGPT mixed its labellers' sources: answer j of a prompt
    # comes from [policy, *mix_with][j mod their number]
    mix_with: List[str] = field(default_factory=list)
    # Prompts of these splits (rm: what the next RM trains on; eval: what it is measured on),
    # or of `prompts_file` (a text file, one prompt a line) instead
    splits: List[str] = field(default_factory=lambda: ["rm", "eval"])
    prompts_file: Optional[str] = None
    max_prompts: Optional[int] = 1024  # the first N prompts (of each split); null = all
    answers_per_prompt: int = 4  # K sampled answers per prompt; exact duplicates dropped
    temperature: float = 1.0
    batch_size: int = 64  # prompts per generation batch
    # Who ranks: gold = the toy task's simulated labeller (ranks by the gold scorer, swaps one
    # adjacent pair with data.toy.label_noise as the built-in comparisons do); verifier = prompts with
    # verifiable instructions (data=ifeval) ranked by the share of their instructions each answer
    # follows strictly, with the same noise; none = ranks left empty (null) for a person to fill in,
    # in any tool (docs/collect.md)
    labeller: str = "gold"
    label_noise: Optional[float] = None  # the simulated labeller's noise; null = data.toy.label_noise


@dataclass
class LoopConfig:
    """InstructGPT's rounds (docs/collect.md): round 1 is sft -> rm -> ppo; each later round
    collects answers of the previous round's policy, ranks them, trains the reward model on old
    and new comparisons and runs stage 3 again. Round n writes runs/<run>/round_<n>/<stage>;
    the SFT policy is round 1's unless the round trains its own."""

    round: int = 1
    # round > 1: the reward model starts from the sft policy (retrain: sft) or from the previous
    # round's reward model (continue training it: previous)
    rm_from: str = "sft"
    # round > 1: stage 3 starts from the sft policy (sft) or from the previous round's policy
    # (previous); the frozen reference stays the policy it starts from
    policy_from: str = "sft"
    policy_stage: str = "ppo"  # the stage whose policy a later round collects on (ppo, dpo, bon_sft, sft)
