"""Tokenizers and models: the built-in tiny model, or any Hugging Face checkpoint, and LoRA.

`model.name_or_path: null` builds the tiny Llama-style model from `model.tiny` and a tokenizer
built deterministically in code (no file, no download). Otherwise the hub id or local folder is
loaded with `from_pretrained`; `trust_remote_code` stays off unless the config turns it on.
"""

from __future__ import annotations

import contextlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from rlhf.config import ModelConfig

PAD, EOS = "<|pad|>", "<|eos|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Every turn opens with its role token; an assistant turn closes with EOS, so the EOS that ends a
# response is also the end-of-turn marker the model learns to emit.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}" + EOS + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Whole-word tokens for the toy task (data/README.md), so a sorted list of 6 digits is ~8 tokens.
# Everything else falls back to bytes: any text can be encoded and decoded losslessly.
TINY_WORDS = ("sort", " ascending", " descending", "reverse", *(f" {d}" for d in "0123456789"))


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE whose merges spell out TINY_WORDS; the same ids on every machine."""
    vocab = {tok: i for i, tok in enumerate((PAD, EOS, *ROLE_TOKENS))}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):  # one token per byte
        vocab[c] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        chars = word.replace(" ", "\u0120")  # the byte-level stand-in for a space ("Ġ")
        for end in range(2, len(chars) + 1):
            left, right = chars[: end - 1], chars[end - 1]
            if chars[:end] not in vocab:
                merges.append((left, right))
                vocab[chars[:end]] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([PAD, EOS, *ROLE_TOKENS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                        additional_special_tokens=list(ROLE_TOKENS))
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.padding_side = "left"  # generation continues prompts; left padding keeps them flush
    return tokenizer


def load_tokenizer(cfg: ModelConfig):
    if cfg.name_or_path is None:
        tokenizer = build_tiny_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                  trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.eos_token is None:
        raise ValueError(f"model.name_or_path={cfg.name_or_path!r}: the tokenizer has no EOS token, "
                         "so responses could not end; use a tokenizer that defines eos_token")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # PAD must differ from EOS: with PAD == EOS, masking padding also masks the EOS that ends
        # each response, and the policy never learns to stop. The new row is resized in below.
        tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(cfg: ModelConfig, tokenizer, path: str | None = None, dropout: float = 0.0):
    """The policy architecture: the tiny model (built fresh) or a pretrained checkpoint.
    `path` overrides `cfg.name_or_path` (e.g. a stage's `final/` folder)."""
    source = path or cfg.name_or_path
    if source is None:
        model = build_tiny_model(cfg, tokenizer, dropout).to(getattr(torch, cfg.dtype))
    else:
        model = _from_pretrained(AutoModelForCausalLM, cfg, source, dropout, pinned=path is None)
    return _fit_to_tokenizer(model, tokenizer)


def load_reward_model(cfg: ModelConfig, tokenizer, path: str, dropout: float = 0.0):
    """A sequence classifier with one output (the score, read at the last non-pad token).
    From a causal LM checkpoint (e.g. runs/<run>/sft/final) the score head starts random."""
    model = _from_pretrained(AutoModelForSequenceClassification, cfg, path, dropout,
                             pinned=path == cfg.name_or_path, num_labels=1)
    return _fit_to_tokenizer(model, tokenizer)


def _from_pretrained(auto_class, cfg: ModelConfig, source: str, dropout: float, pinned: bool, **kw):
    """`pinned`: the source is the configured hub model, so model.revision applies to it."""
    revision = cfg.revision if pinned else None
    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=cfg.trust_remote_code, **kw)
    set_dropout(config, dropout)
    return auto_class.from_pretrained(source, config=config, revision=revision,
                                      trust_remote_code=cfg.trust_remote_code, dtype=getattr(torch, cfg.dtype),
                                      attn_implementation=cfg.attn_implementation)


def _fit_to_tokenizer(model, tokenizer):
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        # load_tokenizer added a PAD token. Its row is never trained on (PAD is masked), so the
        # plain initialisation does; mean_resizing would sample it from the embeddings' covariance.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id  # sequence classifiers find the last token by it
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def set_dropout(config, p: float) -> None:
    """Sets every dropout probability a transformers config has (names differ by architecture:
    attention_dropout, hidden_dropout_prob, resid_pdrop, ...)."""
    for key, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, p)


def build_tiny_model(cfg: ModelConfig, tokenizer, dropout: float = 0.0):
    t = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_attention_heads,
        max_position_embeddings=t.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    set_dropout(config, dropout)
    with torch.random.fork_rng(devices=[]), _no_zero3_init():  # seeded weights without touching the caller's RNG
        torch.manual_seed(t.seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)


@contextlib.contextmanager
def _no_zero3_init():
    """Builds the tiny model whole even while a ZeRO-3 config is active (under which transformers
    would create it sharded, drawing its initial weights in another order): the same seed gives
    the same model with or without DeepSpeed. It is small; DeepSpeed shards it afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    active = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers keeps no public getter
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None and active() is not None:
            hf_deepspeed.set_hf_deepspeed_config(active())


# ---- LoRA (peft) ----

def peft_lora_config(lora, task: str):
    """peft's LoraConfig from ours; `task` "causal" (policy) or "score" (RM, critic: the score
    head is listed in modules_to_save, so it trains in full beside the adapters)."""
    from peft import LoraConfig, TaskType

    target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target,
                      task_type=TaskType.CAUSAL_LM if task == "causal" else TaskType.SEQ_CLS,
                      modules_to_save=None if task == "causal" else ["score"])


def apply_lora(model, lora, task: str):
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(lora, task))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model):
    """The transformers model inside a peft wrapper (adapters still active), or the model itself."""
    return model.get_base_model() if is_peft(model) else model


class AdapterDisabled(torch.nn.Module):
    """PPO's frozen reference as the LoRA policy with its adapter switched off: the SFT weights
    the adapter sits on, without a second copy of the model."""

    def __init__(self, policy):
        super().__init__()
        self._policy = [policy]  # a list, so that the policy's parameters are not registered twice

    @property
    def device(self) -> torch.device:  # it has no parameters of its own to tell
        return self._policy[0].device

    def forward(self, **kwargs):
        policy = self._policy[0]
        with policy.disable_adapter():
            return policy(**kwargs)
