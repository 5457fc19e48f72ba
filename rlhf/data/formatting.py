"""The one way a prompt and a response become text and tokens, for every stage.

SFT, the reward model, PPO's rollouts and compare all call these functions, so the same prompt
gives the same bytes (and token ids) everywhere. A training sequence is always
`prompt_ids + response_ids`, tokenized separately: that is the sequence PPO samples (it
continues the prompt's ids), so SFT and the RM train on exactly what the policy will produce.

Tokenizers with a chat template render the prompt with it (generation prompt added). Those
without one use the plain template:

    {bos}System: <text>\\n\\nUser: <text>\\n\\nAssistant: <text>{eos}\\n\\nUser: <text>\\n\\nAssistant:

and the response is rendered as " <text>{eos}". With a chat template the response is
"<text>{eos}". Either way EOS ends every response. Special tokens are written as text by the
template, so tokenization never adds its own (add_special_tokens=False).
"""

from __future__ import annotations

from typing import Sequence

from rlhf.data.records import PromptLike, as_messages

_PLAIN_ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_prompt(tokenizer, prompt: PromptLike) -> str:
    messages = as_messages(prompt)
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    parts = []
    for m in messages:
        text = f"{_PLAIN_ROLE[m['role']]}: {m['content']}"
        if m["role"] == "assistant":
            text += tokenizer.eos_token
        parts.append(text)
    return (tokenizer.bos_token or "") + "\n\n".join(parts) + "\n\nAssistant:"


def render_response(tokenizer, response: str) -> str:
    return (response if tokenizer.chat_template else " " + response) + tokenizer.eos_token


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer, prompts: Sequence[PromptLike]) -> list[list[int]]:
    return _encode(tokenizer, [render_prompt(tokenizer, p) for p in prompts])


def encode_responses(tokenizer, responses: Sequence[str]) -> list[list[int]]:
    return _encode(tokenizer, [render_response(tokenizer, r) for r in responses])


def encode(tokenizer, prompt: PromptLike, response: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) of one example; the model sees their concatenation."""
    return encode_prompts(tokenizer, [prompt])[0], encode_responses(tokenizer, [response])[0]
