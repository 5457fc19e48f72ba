"""`rlhf stage=generate` decodes as the model's generation config says unless told otherwise, and a
pretrained model is not held to the toy task's answer length."""

from transformers import GenerationConfig

from rlhf.config import RLHFConfig
from rlhf.stages.generate import DEFAULT_MAX_NEW_TOKENS, settings


def test_model_without_sampling_settings_decodes_greedily_to_the_data_limit():
    cfg = RLHFConfig()
    assert settings(cfg, GenerationConfig()) == (True, 1.0, cfg.data.max_response_tokens)


def test_model_that_samples_uses_its_temperature_and_length():
    cfg = RLHFConfig()
    assert settings(cfg, GenerationConfig(do_sample=True, temperature=0.3, max_new_tokens=99)) == (False, 0.3, 99)


def test_a_pretrained_model_on_the_toy_config_gets_a_real_answer_length():
    cfg = RLHFConfig()
    cfg.model.name_or_path = "some/chat-model"
    assert settings(cfg, GenerationConfig())[2] == DEFAULT_MAX_NEW_TOKENS > cfg.data.max_response_tokens


def test_generate_options_win():
    cfg = RLHFConfig()
    cfg.generate.greedy, cfg.generate.temperature, cfg.generate.max_new_tokens = False, 0.7, 5
    assert settings(cfg, GenerationConfig(do_sample=True, temperature=0.3, max_new_tokens=99)) == (False, 0.7, 5)
