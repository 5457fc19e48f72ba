"""Models: loading any Hugging Face checkpoint or building the tiny one (loading.py), LoRA,
the reward model's normalisation (reward.py) and the offline GGUF conversion (offline.py)."""

from rlhf.models.loading import (  # noqa: F401
    EOS,
    PAD,
    ROLE_TOKENS,
    AdapterDisabled,
    apply_lora,
    build_tiny_model,
    build_tiny_tokenizer,
    is_peft,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    peft_lora_config,
    set_dropout,
    unwrap,
)
from rlhf.models.reward import REWARD_NORM_KEY, clear_normalization, reward_bias, set_normalization  # noqa: F401
