"""Verifiable instructions ("answer in all lowercase", "no commas", "exactly 3 bullet points",
"end with this phrase"): constraints on an answer that code checks, so they give a gold that no
reward model shares. Records carry them in IFEval's layout (`instruction_id_list` and one
`kwargs` object per instruction; the `ifeval` data format).

The checks are IFEval's own code as PyPI's if-verifiable packages it (an optional extra:
`pip install -e '.[ifeval]'`), rather than a rewrite of its 25 checks that could drift from the
benchmark's. What it would do silently is refused here instead: an unknown instruction id (it
skips the instruction), an argument left out (it draws one at random), a check that needs nltk
data no package installs offline (punkt: it raises mid-run).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from rlhf.data.records import PromptLike, RecordError, prompt_key

EXTRA_HINT = "pip install -e '.[ifeval]' (PyPI's if-verifiable: IFEval's checks)"

# The checks of if-verifiable 0.1.2 that call nltk's sentence or word tokenizer, whose data
# (punkt) is a download, not a package: without it they raise LookupError on every answer.
NEEDS_PUNKT = ("length_constraints:number_sentences", "change_case:capital_word_frequency")


@dataclass(frozen=True)
class Constraints:
    """A prompt's instructions: ids (`keywords:existence`, ...) and each one's arguments, kept as
    canonical JSON so that records stay hashable."""

    ids: tuple[str, ...]
    kwargs: tuple[str, ...]

    def arguments(self) -> list[dict[str, Any]]:
        return [json.loads(k) for k in self.kwargs]


@functools.cache
def registry() -> dict[str, type]:
    """Instruction id -> its check class (IFEval's 25)."""
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as e:
        raise ImportError(f"verifiable instructions need if-verifiable: {EXTRA_HINT}") from e
    return dict(INSTRUCTION_DICT)


@functools.cache
def unavailable() -> dict[str, str]:
    """Instruction id -> why its check cannot run on this machine."""
    import nltk

    missing = []
    for resource in ("tokenizers/punkt", "tokenizers/punkt_tab"):
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(resource)
    if not missing:
        return {}
    return {iid: f"its check needs nltk data ({', '.join(missing)}) that no package installs offline"
            for iid in NEEDS_PUNKT}


def argument_names(iid: str) -> list[str]:
    return list(registry()[iid](iid).get_instruction_args_keys())


def check_constraints(ids: object, kwargs: object, field_ids: str = "instruction_id_list",
                      field_kwargs: str = "kwargs") -> Constraints:
    """The record's instructions, each id known and runnable here and each given exactly the
    arguments its check takes (null values count as absent, as in IFEval's released file), or a
    RecordError naming the field and the id."""
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise RecordError(field_ids, "must be a non-empty list of instruction ids", "bad_instructions")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise RecordError(field_kwargs, f"must be a list of {len(ids)} objects, one per instruction id",
                          "bad_instructions")
    known, skipped = registry(), unavailable()
    canonical = []
    for i, (iid, raw) in enumerate(zip(ids, kwargs)):
        where = f"{field_ids}[{i}]"
        if iid not in known:
            raise RecordError(where, f"unknown instruction id {iid!r} (IFEval's ids: {', '.join(sorted(known))})",
                              "unknown_instruction")
        if iid in skipped:
            raise RecordError(where, f"{iid!r}: {skipped[iid]}", "instruction_unavailable")
        given = {k: v for k, v in raw.items() if v is not None}
        takes = argument_names(iid)
        extra, missing = sorted(set(given) - set(takes)), sorted(set(takes) - set(given))
        if extra or missing:
            said = "; ".join(filter(None, [extra and f"takes no {', '.join(extra)}",
                                           missing and f"needs {', '.join(missing)} (left out, the check would draw one at random)"]))
            raise RecordError(f"{field_kwargs}[{i}]", f"{iid!r} {said}; it takes: {', '.join(takes) or 'nothing'}",
                              "bad_instruction_kwargs")
        try:
            known[iid](iid).build_description(**given)
        except Exception as e:  # the check's own validation: a bad relation, a negative count, ...
            raise RecordError(f"{field_kwargs}[{i}]", f"{iid!r} refused its arguments: {e}",
                              "bad_instruction_kwargs") from None
        canonical.append(json.dumps(given, sort_keys=True, ensure_ascii=False))
    return Constraints(tuple(ids), tuple(canonical))


@dataclass(frozen=True)
class Verdict:
    """Which instructions an answer follows: strict (the answer as written) and loose (IFEval's
    loose reading: also with its first or last line or markdown asterisks removed)."""

    ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def prompt_strict(self) -> float:
        return float(all(self.strict))

    @property
    def prompt_loose(self) -> float:
        return float(all(self.loose))


def user_text(prompt: PromptLike) -> str:
    """The text the instructions were written into: the prompt, or its last user turn."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def verify(prompt: PromptLike, response: str, constraints: Constraints) -> Verdict:
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(response, list(constraints.ids), constraints.arguments(), user_text(prompt),
                                       registry())
    if not results:  # an empty answer: if-verifiable returns no results, and it follows nothing
        none = (False,) * len(constraints.ids)
        return Verdict(constraints.ids, none, none)
    return Verdict(tuple(r.instruction_id for r in results), tuple(r.strict_pass for r in results),
                   tuple(r.loose_pass for r in results))


class InstructionGold:
    """The gold scorer of data with verifiable instructions: 1.0 when the answer follows every
    instruction of its prompt, strictly (IFEval's prompt-level strict accuracy), else 0.0."""

    def __init__(self, constraints: dict[str, Constraints]):
        self.constraints = constraints  # prompt_key -> the prompt's instructions

    def __call__(self, prompt: PromptLike, response: str) -> float:
        return self.verdict(prompt, response).prompt_strict

    def verdict(self, prompt: PromptLike, response: str) -> Verdict:
        key = prompt_key(prompt)
        if key not in self.constraints:
            raise KeyError(f"no verifiable instructions for the prompt {key[:80]!r}: it is not in this data")
        return verify(prompt, response, self.constraints[key])
