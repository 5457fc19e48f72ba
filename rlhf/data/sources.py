"""The adapters that turn one row of a source into records, one per data format (the rows come
from files.py, each with its location, so that an adapter's error names where the record is).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

from rlhf.data.files import Row
from rlhf.data.records import (
    Demonstration,
    Dropped,
    Prompt,
    Record,
    RecordError,
    check_message,
    check_prompt,
    check_response,
    make_comparison,
)


# ---- adapters: one row -> records -----------------------------------------------------------


def get(row: Row, name: str, *, required: bool = True) -> Any:
    """The value at a (dotted) field name; a missing required field is a RecordError."""
    value: Any = row
    for part in name.split("."):
        if isinstance(value, list) and part.isdigit():  # turns.0: the first of a list
            value = {part: value[int(part)]} if int(part) < len(value) else {}
        if not isinstance(value, dict) or part not in value:
            if required:
                raise RecordError(name, "missing field (map it with data.fields.<name>=<column>)",
                                  "missing_field")
            return None
        value = value[part]
    if value is None and required:
        raise RecordError(name, "is null", "missing_field")
    return value


def demonstration(row: Row, f, source: str) -> list[Record]:
    prompt = check_prompt(get(row, f.prompt), f.prompt)
    return [Demonstration(prompt, check_response(get(row, f.response), f.response), source)]


def messages(row: Row, f, source: str) -> list[Record]:
    value = get(row, f.messages)
    if not isinstance(value, list):
        raise RecordError(f.messages, f"expected a list of messages, got {type(value).__name__}",
                          "wrong_type")
    last = value[-1] if value else None
    if len(value) < 2 or not isinstance(last, dict) or last.get("role") != "assistant":
        raise RecordError(f.messages, "needs a prompt then a final assistant turn to imitate",
                          "bad_messages")
    prompt = check_prompt(value[:-1], f.messages)
    return [Demonstration(prompt, check_response(last.get("content"), f"{f.messages}[{len(value) - 1}].content"),
                          source)]


def pairwise(row: Row, f, source: str) -> list[Record]:
    """chosen/rejected are strings, or conversations ending in the assistant's answer
    (UltraFeedback binarized, trl's conversational preference format); a conversation's earlier
    turns, when it has them, are the prompt, and must be the same in both."""
    chosen, rejected = get(row, f.chosen), get(row, f.rejected)
    if isinstance(chosen, list) or isinstance(rejected, list):
        (context, chosen), (other, rejected) = _last_answer(chosen, f.chosen), _last_answer(rejected, f.rejected)
        if context != other:
            raise RecordError(f.rejected, "chosen and rejected differ before their last assistant turn",
                              "transcripts_differ")
        prompt = check_prompt(context or get(row, f.prompt), f.chosen if context else f.prompt)
    else:
        prompt = check_prompt(get(row, f.prompt), f.prompt)
        chosen = check_response(chosen, f.chosen, compared=True)
        rejected = check_response(rejected, f.rejected, compared=True)
    margin = get(row, f.margin, required=False)
    return [make_comparison(prompt, [chosen, rejected], [0, 1], f.rejected, margin, source)]


def _last_answer(value: object, field: str) -> tuple[list[dict], str]:
    """(earlier turns, the final assistant answer) of a conversation."""
    if not isinstance(value, list) or not value:
        raise RecordError(field, f"expected a non-empty list of messages, got {type(value).__name__}", "wrong_type")
    last = value[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise RecordError(f"{field}[{len(value) - 1}]", "the conversation must end with an assistant turn",
                          "bad_messages")
    answer = check_response(last.get("content"), f"{field}[{len(value) - 1}].content", compared=True)
    return [check_message(m, f"{field}[{i}]") for i, m in enumerate(value[:-1])], answer


def ranked(row: Row, f, source: str, *, each_label: bool = False) -> list[Record]:
    """`each_label` (data.multi_label=each): a row with several labellers' rankings (`f.labels`,
    as `rlhf-rank --web` exports) gives one comparison per ranking instead of their aggregate."""
    prompt = check_prompt(get(row, f.prompt), f.prompt)
    labels = get(row, f.labels, required=False)
    if each_label and labels is not None:
        return _each_label(row, f, source, prompt, labels)
    items = get(row, f.responses)
    if not isinstance(items, list):
        raise RecordError(f.responses, f"expected a list, got {type(items).__name__}", "wrong_type")
    if all(isinstance(x, str) for x in items):  # strings, best first, no ties
        texts = [check_response(x, f"{f.responses}[{i}]", compared=True) for i, x in enumerate(items)]
        ranks = list(range(len(texts)))
    else:  # objects with a text and a rank (OASST: replies carry a `rank`, 0 = best)
        pairs = []
        for i, x in enumerate(items):
            name = f"{f.responses}[{i}]"
            if not isinstance(x, dict):
                raise RecordError(name, "mix of strings and objects; use one or the other", "wrong_type")
            rank = get(x, f.response_rank, required=False)
            if rank is None:
                raise RecordError(f"{name}.{f.response_rank}", "not ranked yet (null or missing): a file written by "
                                  "`rlhf stage=collect collect.labeller=none` is ranked by a person first; give each "
                                  f"response a {f.response_rank} (0 = best, equal = tie), see docs/collect.md",
                                  "unranked")
            if isinstance(rank, bool) or not isinstance(rank, (int, float)):
                raise RecordError(f"{name}.{f.response_rank}", f"expected a number, got "
                                  f"{type(rank).__name__}", "wrong_type")
            pairs.append((rank, check_response(get(x, f.response_text), f"{name}.{f.response_text}", compared=True)))
        pairs.sort(key=lambda p: p[0])  # stable: equal ranks keep their order, and are ties
        distinct = sorted({r for r, _ in pairs})
        texts, ranks = [t for _, t in pairs], [distinct.index(r) for r, _ in pairs]
    if len(set(ranks)) < 2 and len(texts) >= 2:
        if isinstance(labels, list) and len(labels) > 1:  # each labeller ranked, and they cancel out
            raise Dropped(f.responses, "the labellers' rankings cancel out (every mean rank equal)",
                          "labellers_disagree")
        raise RecordError(f.responses, "every response has the same rank, so there is nothing to "
                          "learn from this comparison", "all_tied")
    return [make_comparison(prompt, texts, ranks, f.responses, None, source)]


def _each_label(row: Row, f, source: str, prompt, labels: object) -> list[Record]:
    items = get(row, f.responses)
    if not isinstance(labels, list) or not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise RecordError(f.labels, "expected a list of {labeller, ranks} beside a list of response objects",
                          "wrong_type")
    texts = [check_response(get(x, f.response_text), f"{f.responses}[{i}].{f.response_text}", compared=True)
             for i, x in enumerate(items)]
    comparisons = []
    for n, label in enumerate(labels):
        ranks = label.get("ranks") if isinstance(label, dict) else None
        if not isinstance(ranks, list) or len(ranks) != len(texts) or \
                not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
            raise RecordError(f"{f.labels}[{n}].ranks", f"expected {len(texts)} whole-number ranks, one per response",
                              "wrong_type")
        if len(set(ranks)) < 2:
            raise RecordError(f"{f.labels}[{n}].ranks", "every response has the same rank", "all_tied")
        order = sorted(range(len(texts)), key=lambda i: ranks[i])  # best first; stable, so ties keep file order
        distinct = sorted(set(ranks))
        comparisons.append(make_comparison(prompt, [texts[i] for i in order], [distinct.index(ranks[i]) for i in order],
                                           f.responses, None, source))
    return comparisons


_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: object, field: str) -> list[dict]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [{'role': 'user', ...}, {'role': 'assistant', ...}]"""
    if not isinstance(text, str):
        raise RecordError(field, f"expected a transcript string, got {type(text).__name__}", "wrong_type")
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 5:
        raise RecordError(field, "expected '\\n\\nHuman: ...\\n\\nAssistant: ...' turns",
                          "bad_transcript")
    return [{"role": _ROLE[role], "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def hh_rlhf(row: Row, f, source: str) -> list[Record]:
    chosen = parse_transcript(get(row, f.chosen), f.chosen)
    rejected = parse_transcript(get(row, f.rejected), f.rejected)
    for turns, name in ((chosen, f.chosen), (rejected, f.rejected)):
        if turns[-1]["role"] != "assistant":
            raise RecordError(name, "the transcript must end with an Assistant turn", "bad_transcript")
    context = _shared_context(chosen, rejected)
    if context is None:
        raise RecordError(f.rejected, "chosen and rejected differ before their last Assistant turn",
                          "transcripts_differ")
    prompt = check_prompt(chosen[:context], f.chosen)
    return [make_comparison(prompt, [_reply(chosen[context:]), _reply(rejected[context:])], [0, 1],
                            f.rejected, None, source)]


def _shared_context(chosen: list[dict], rejected: list[dict]) -> int | None:
    """How many turns the two transcripts share as their prompt: all but the last, or, when a
    reply itself contains "\\n\\nAssistant:" (a few public HH-RLHF records; it then parses as two
    Assistant turns in a row), the turns up to the last shared Human turn after which both go
    on with Assistant turns only. None when they differ earlier."""
    if chosen[:-1] == rejected[:-1]:
        return len(chosen) - 1
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] != "user":
        shared -= 1
    rest = chosen[shared:] + rejected[shared:]
    return shared if shared and all(t["role"] == "assistant" for t in rest) else None


def _reply(turns: list[dict]) -> str:
    """The reply as the labeller saw it: consecutive Assistant turns are one reply."""
    return "\n\nAssistant: ".join(t["content"] for t in turns)


def prompt_only(row: Row, f, source: str) -> list[Record]:
    return [Prompt(check_prompt(get(row, f.prompt), f.prompt), source)]


def ifeval(row: Row, f, source: str) -> list[Record]:
    from rlhf.data.instructions import check_constraints  # needs the ifeval extra: only for this format

    prompt = check_prompt(get(row, f.prompt), f.prompt)
    constraints = check_constraints(get(row, f.instruction_ids), get(row, f.instruction_kwargs),
                                    f.instruction_ids, f.instruction_kwargs)
    return [Prompt(prompt, source, constraints)]


def adapter(src) -> Callable[[Row, Any, str], list[Record]]:
    """The row -> records function of a source's format, with the source's own settings bound."""
    if src.format.value == "ranked":
        return functools.partial(ranked, each_label=src.multi_label.value == "each")
    return ADAPTERS[src.format.value]


ADAPTERS: dict[str, Callable[[Row, Any, str], list[Record]]] = {
    "demonstration": demonstration,
    "messages": messages,
    "pairwise": pairwise,
    "ranked": ranked,
    "hh_rlhf": hh_rlhf,
    "oasst": ranked,  # after rlhf.data.oasst.conversations has grouped the message rows
    "prompt": prompt_only,
    "ifeval": ifeval,
}
