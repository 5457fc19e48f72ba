"""One rendering for every stage: exact text, EOS closing every response, PAD != EOS."""

import copy

from tests.conftest import EXAMPLES, data_config
from rlhf.data import encode, encode_responses, load_data, render_prompt, render_response
from rlhf.models import load_tokenizer
from rlhf.config import DataConfig, ModelConfig, ToyConfig


def test_chat_template_rendering_is_exact(tokenizer):
    assert render_prompt(tokenizer, "sort ascending: 3 1 2") == "<|user|>sort ascending: 3 1 2<|assistant|>"
    assert render_response(tokenizer, "1 2 3") == "1 2 3<|eos|>"
    turns = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"})
    assert render_prompt(tokenizer, turns) == ("<|system|>Be brief.<|user|>hi<|assistant|>hello<|eos|>"
                                               "<|user|>bye<|assistant|>")


def test_plain_template_when_the_tokenizer_has_none(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    turns = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"})
    assert render_prompt(plain, turns) == ("System: Be brief.\n\nUser: hi\n\nAssistant: hello<|eos|>"
                                           "\n\nUser: bye\n\nAssistant:")
    assert render_response(plain, "ok") == " ok<|eos|>"


def test_a_string_prompt_is_one_user_turn(tokenizer):
    assert render_prompt(tokenizer, "x") == render_prompt(tokenizer, ({"role": "user", "content": "x"},))


def test_encode_is_lossless_and_every_response_ends_with_eos(tokenizer):
    bundle = load_data(DataConfig(toy=ToyConfig(num_prompts=300)), tokenizer)
    for demo in bundle.splits["sft"].demonstrations:
        prompt_ids, response_ids = encode(tokenizer, demo.prompt, demo.response)
        assert response_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in response_ids[:-1] + prompt_ids
        assert tokenizer.decode(prompt_ids + response_ids) == (render_prompt(tokenizer, demo.prompt)
                                                               + render_response(tokenizer, demo.response))
    odd = "naïve café — 東京 😀\n\nHuman: not a turn"
    assert tokenizer.decode(encode_responses(tokenizer, [odd])[0]) == odd + "<|eos|>"


def test_toy_words_are_single_tokens(tokenizer):
    prompt_ids, response_ids = encode(tokenizer, "sort ascending: 3 1 4 1 5", "1 1 3 4 5")
    assert len(prompt_ids) == 10 and len(response_ids) == 6


def test_same_prompt_renders_the_same_for_every_stage(tokenizer):
    # SFT reads demonstrations, the RM comparisons, PPO and compare prompts: one prompt, one text.
    cfg = data_config(EXAMPLES / "hh_rlhf.jsonl", "hh_rlhf", demonstrations_from_comparisons=True)
    bundle = load_data(cfg, tokenizer)
    for name, split in bundle.splits.items():
        by_kind = [render_prompt(tokenizer, r.prompt) for r in (split.demonstrations[1], split.comparisons[1], split.prompts[1])]
        assert len(set(by_kind)) == 1, name


def test_pad_differs_from_eos_even_when_the_checkpoint_shares_them(tmp_path, tokenizer):
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    shared = copy.deepcopy(tokenizer)
    shared.pad_token = shared.eos_token
    shared.save_pretrained(tmp_path)
    loaded = load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    assert loaded.pad_token_id not in (None, loaded.eos_token_id)
    assert loaded.chat_template == tokenizer.chat_template
