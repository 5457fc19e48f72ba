"""The three record kinds every stage consumes, and the checks that make a record valid.

A prompt is either a string (one user turn) or a list of chat messages
`{"role": "system"|"user"|"assistant", "content": str}` ending with a user turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Union

if TYPE_CHECKING:
    from rlhf.data.instructions import Constraints

Message = dict  # {"role": ..., "content": ...}
PromptLike = Union[str, tuple]  # str or a tuple of messages (tuples keep records hashable)

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Bad data: names the source, the line or row, the field and what to do."""


class RecordError(ValueError):
    """One bad field of one record. The loader adds where the record came from."""

    def __init__(self, field: str, reason: str, kind: str):
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason
        self.kind = kind  # short, stable name of the failure class; skips are counted by it


class Dropped(RecordError):
    """A record left out on purpose, not an error (a demonstration with an empty answer, a
    message filtered by data.oasst): counted by `kind` in the summary whatever data.on_error says."""


@dataclass(frozen=True)
class Demonstration:
    prompt: PromptLike
    response: str
    source: str = ""


@dataclass(frozen=True)
class Comparison:
    """K >= 2 responses to one prompt, best first. `ranks[i]` is response i's rank (0 = best);
    equal ranks are ties, which yield no training pair. Pairwise data is the K = 2 case."""

    prompt: PromptLike
    responses: tuple[str, ...]
    ranks: tuple[int, ...]
    margin: float | None = None  # pairwise only: how much better the first response is
    source: str = ""

    @property
    def k(self) -> int:
        return len(self.responses)

    def pairs(self) -> Iterator[tuple[int, int]]:
        """(better, worse) index pairs: all C(K,2) pairs except ties."""
        for i in range(self.k):
            for j in range(i + 1, self.k):
                if self.ranks[i] < self.ranks[j]:
                    yield i, j


def preference_pairs(comparisons: list[Comparison], mode: str = "all") -> list[tuple[PromptLike, str, str]]:
    """(prompt, chosen, rejected) triples from K-wise comparisons, for trainers that know pairs
    only (DPO). all: every better-worse pair, C(K,2) minus ties; best: each best-ranked response
    against every response ranked below it (K - 1 pairs without ties). In comparison order, then
    by (better, worse) index."""
    if mode not in ("all", "best"):
        raise ValueError(f"pairs mode {mode!r}: choose all or best")
    triples = []
    for c in comparisons:
        top = min(c.ranks)
        for i, j in c.pairs():
            if mode == "all" or c.ranks[i] == top:
                triples.append((c.prompt, c.responses[i], c.responses[j]))
    return triples


@dataclass(frozen=True)
class Prompt:
    prompt: PromptLike
    source: str = ""
    constraints: "Constraints | None" = None  # verifiable instructions (the ifeval format; rlhf.data.instructions)


Record = Union[Demonstration, Comparison, Prompt]


def prompt_key(prompt: PromptLike) -> str:
    """Canonical text of a prompt: what splits hash and what deduplication compares."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def as_messages(prompt: PromptLike) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


# ---- validation: each function returns the clean value or raises RecordError -----------------


def check_prompt(value: object, field: str) -> PromptLike:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(field, "empty prompt", "empty_prompt")
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise RecordError(field, "empty list of messages", "empty_prompt")
        messages = tuple(check_message(m, f"{field}[{i}]") for i, m in enumerate(value))
        if not any(m["content"].strip() for m in messages):
            raise RecordError(field, "every message is empty", "empty_prompt")
        if messages[-1]["role"] != "user":
            raise RecordError(field, f"the last message must be the user's turn to answer, "
                              f"got role {messages[-1]['role']!r}", "bad_messages")
        return messages
    raise RecordError(field, f"expected a string or a list of chat messages, got "
                      f"{type(value).__name__}", "wrong_type")


def check_message(value: object, field: str) -> Message:
    if not isinstance(value, dict):
        raise RecordError(field, f"expected a message object, got {type(value).__name__}",
                          "bad_messages")
    role, content = value.get("role"), value.get("content")
    if role not in ROLES:
        raise RecordError(f"{field}.role", f"role must be one of {ROLES}, got {role!r}",
                          "bad_messages")
    if not isinstance(content, str):
        raise RecordError(f"{field}.content", f"expected a string, got {type(content).__name__}",
                          "wrong_type")
    # An empty turn is kept as it is (released HH-RLHF conversations hold empty Assistant turns
    # between Human turns) and counted as empty_turns; only a prompt with nothing in it is refused.
    # Only the two keys every chat template reads are kept (extra keys such as OASST's ids would
    # otherwise change the split hash of an identical prompt).
    return _FrozenMessage(role=role, content=content)


class _FrozenMessage(dict):
    """A message dict that can live in a frozen record: records are hashed and compared."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash((self["role"], self["content"]))


def check_response(value: object, field: str, *, compared: bool = False) -> str:
    """A response text. An empty one is valid in a comparison (an assistant that said nothing
    is real HH-RLHF data, chosen and rejected alike); a demonstration of saying nothing is left
    out (SFT would learn to say nothing)."""
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {type(value).__name__}", "wrong_type")
    if not value.strip() and not compared:
        raise Dropped(field, "empty response", "empty_demonstration")
    return value


def make_comparison(prompt: PromptLike, responses: list[str], ranks: list[int],
                    field: str, margin: object = None, source: str = "") -> Comparison:
    """Builds a Comparison from responses sorted best-first, enforcing K >= 2 and uniqueness.
    Answers that are all the same text carry no preference (released HH-RLHF files hold a few
    such pairs): left out and counted as identical_answers, not an error."""
    if len(responses) < 2:
        raise RecordError(field, f"a comparison needs K >= 2 responses, got {len(responses)}",
                          "too_few_responses")
    if len(set(responses)) == 1:
        raise Dropped(field, "every answer is the same text: no preference to learn", "identical_answers")
    seen: dict[str, int] = {}
    for i, text in enumerate(responses):
        if text in seen:
            raise RecordError(field, f"responses {seen[text]} and {i} are identical",
                              "duplicate_responses")
        seen[text] = i
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise RecordError("margin", f"expected a number, got {type(margin).__name__}",
                              "wrong_type")
        if len(responses) != 2:
            raise RecordError("margin", "a margin applies to pairwise comparisons only", "bad_margin")
        margin = float(margin)
    return Comparison(prompt, tuple(responses), tuple(ranks), margin, source)


def simulated_ranking(texts: list[str], scores: list[float], label_noise: float, rng) -> tuple[list[str], list[int]]:
    """A simulated labeller's ranking: `texts` best-first by their scores, with their ranks
    (equal scores tie), and with probability `label_noise` one adjacent non-tied pair swapped
    (the ranks stay in stated order, so the two swapped answers carry each other's rank). `rng`:
    a random.Random."""
    scored = sorted(zip(scores, texts), key=lambda x: -x[0])
    responses = [t for _, t in scored]
    distinct = sorted({s for s, _ in scored}, reverse=True)
    ranks = [distinct.index(s) for s, _ in scored]
    if rng.random() < label_noise:
        untied = [i for i in range(len(responses) - 1) if ranks[i] < ranks[i + 1]]
        if untied:
            i = rng.choice(untied)
            responses[i], responses[i + 1] = responses[i + 1], responses[i]
    return responses, ranks
