"""The tiny model is built deterministically; any HF folder loads through the same code path."""

import pytest
import torch

from rlhf.config import ModelConfig
from rlhf.data import encode_prompts
from rlhf.models import build_tiny_tokenizer, load_causal_lm, load_tokenizer


def test_tiny_model_is_seeded_and_runs_a_left_padded_batch(tokenizer):
    a, b = load_causal_lm(ModelConfig(), tokenizer), load_causal_lm(ModelConfig(), tokenizer)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    batch = tokenizer.pad({"input_ids": encode_prompts(tokenizer, ["sort ascending: 1 2", "sort descending: 3 4 5 6"])},
                          return_tensors="pt")
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id  # left padding
    logits = a(**batch).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()
    assert a.generation_config.eos_token_id == tokenizer.eos_token_id != a.config.pad_token_id


def test_a_saved_checkpoint_loads_by_path_with_the_same_logits(tmp_path, tokenizer):
    model = load_causal_lm(ModelConfig(), tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    cfg = ModelConfig(name_or_path=str(tmp_path))
    tok2 = load_tokenizer(cfg)
    again = load_causal_lm(cfg, tok2)
    ids = torch.tensor(encode_prompts(tok2, ["sort ascending: 3 1 2"]))
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_trust_remote_code_is_off_unless_configured(tmp_path, monkeypatch, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    seen = []
    import rlhf.models.loading as models

    real = models.AutoTokenizer.from_pretrained
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained",
                        lambda *a, **kw: seen.append(kw["trust_remote_code"]) or real(*a, **kw))
    load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    load_tokenizer(ModelConfig(name_or_path=str(tmp_path), trust_remote_code=True))
    assert seen == [False, True]


def test_a_tokenizer_without_eos_is_refused(tmp_path):
    tok = build_tiny_tokenizer()
    tok.eos_token = None
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no EOS token"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))


def test_dropout_is_set_in_every_dropout_field(tokenizer):
    assert load_causal_lm(ModelConfig(), tokenizer).config.attention_dropout == 0.0
    model = load_causal_lm(ModelConfig(), tokenizer, dropout=0.2)
    assert model.config.attention_dropout == 0.2
    from transformers import GPT2Config
    from rlhf.models import set_dropout

    gpt2 = GPT2Config()
    set_dropout(gpt2, 0.2)
    assert (gpt2.resid_pdrop, gpt2.embd_pdrop, gpt2.attn_pdrop, gpt2.summary_first_dropout) == (0.2,) * 4
