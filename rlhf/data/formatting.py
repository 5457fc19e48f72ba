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


def truncate_prompt(tokenizer, prompt: PromptLike, max_tokens: int) -> tuple[PromptLike, str, int] | None:
    """(prompt, how, tokens) within max_tokens once formatted, as a user expects a long
    conversation to be shortened: its most recent turns kept, whole exchanges dropped from the
    left (so that it still opens with a user turn), the system message kept; when the last turn
    alone is too long, its beginning is cut off. None when even that cannot fit (the system
    message alone is too long). `how` is "prompt_turns_dropped" or "prompt_turn_cut"."""
    messages = as_messages(prompt)
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]

    def length(ms: list) -> int:
        return len(encode_prompts(tokenizer, [ms])[0])

    while len(turns) > 1 and length(system + turns) > max_tokens:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]
    n = length(system + turns)
    if n <= max_tokens:
        return _like(prompt, system + turns), "prompt_turns_dropped", n
    # One turn left and still too long: keep its last tokens. Decoding a suffix of the ids may
    # re-encode to a few more tokens, so shorten until the formatted prompt fits.
    ids = tokenizer(turns[-1]["content"], add_special_tokens=False)["input_ids"]
    keep = len(ids) - (n - max_tokens)
    while keep > 0:
        text = tokenizer.decode(ids[-keep:]).lstrip()
        cut = system + [{"role": turns[-1]["role"], "content": text}]
        n = length(cut)
        if n <= max_tokens and text:
            return _like(prompt, cut), "prompt_turn_cut", n
        keep -= max(1, n - max_tokens)
    return None


def _like(original: PromptLike, messages: list) -> PromptLike:
    """The same kind of prompt as the original: a string stays a string."""
    if isinstance(original, str):
        return messages[-1]["content"]
    from rlhf.data.records import check_prompt

    return check_prompt(messages, "prompt")
