"""What the stages that sample answers share: the answers' length, and the gold evaluation that
ends a trainer stage. Part of the schema (rlhf/config/schema.py re-exports both), apart from it
so that judging.py and loop.py, which the schema imports, can build on them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class AnswerLengthConfig:
    """A stage that samples answers to prompts: compare, evaluate, collect, bon_sft, and the gold
    evaluation of SFT and DPO. (Stage 3's ppo.max_new_tokens, in online_rl.py, means the same for
    its rollouts; generate's has its own rule: it asks the model first.)"""

    # New tokens an answer may have; null = data.max_response_tokens, the longest response the
    # SFT policy and the reward model trained on
    max_new_tokens: Optional[int] = None


@dataclass
class GoldEvalConfig(AnswerLengthConfig):
    """A trainer stage's gold evaluation (rlhf/stages/training.py, gold_metrics): on a task with a
    gold scorer (the toy task), the gold score of greedy and sampled answers, max_new_tokens
    long, to the first gold_eval_prompts eval prompts after training."""

    gold_eval_prompts: int = 256  # 0: skip it
