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
import hashlib
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


# ---- composing training prompts: any prompt plus instructions drawn from the checks' registry ----

REPEAT = "combination:repeat_prompt"  # its argument is the prompt itself, not a draw


def runnable_kinds() -> list[str]:
    skipped = unavailable()
    return sorted(i for i in registry() if i not in skipped)


def compose(prompts: list[str], *, kinds: list[str] | None = None, per_prompt: int = 1, seed: int = 0,
            first_key: int = 0, draws: int = 1) -> list[dict]:
    """Rows in IFEval's layout: each prompt followed by the descriptions of `per_prompt`
    instructions drawn from `kinds` (default: every kind that runs here), no two that IFEval
    lists as conflicting (fewer when the ones drawn first leave no kind that goes with them:
    `detectable_format:constrained_response` goes with none), with arguments drawn as IFEval's
    own generator draws them. `draws` rows per prompt, each drawing first from the kinds its
    earlier rows did not use (so a few prompts make many different rows). The same
    prompts, kinds and seed give the same rows; the draws leave the global random state as
    they found it."""
    import random

    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    kinds = sorted(kinds) if kinds is not None else runnable_kinds()
    bad = [k for k in kinds if k not in registry() or k in unavailable()]
    if bad:
        raise ValueError(f"instruction kinds {bad}: unknown or not runnable here; choose from {runnable_kinds()}")
    if not 1 <= per_prompt <= len(kinds):
        raise ValueError(f"per_prompt={per_prompt}: must lie in 1..{len(kinds)} (the kinds to draw from)")
    if draws < 1:
        raise ValueError(f"draws={draws}: must be at least 1 (rows per prompt)")
    rng = random.Random(seed)
    rows = []
    for base in prompts:
        used: set[str] = set()  # this prompt's kinds so far: its next row draws the others first
        for _ in range(draws):
            chosen = _draw_kinds(rng, kinds, per_prompt, used, INSTRUCTION_CONFLICTS)
            used.update(chosen)
            descriptions, arguments = [], []
            for kind in chosen:
                checker = registry()[kind](kind)
                state = random.getstate()  # IFEval's checks draw their arguments from the global generator
                random.seed(rng.randrange(2**32))
                try:
                    descriptions.append(checker.build_description(**({"prompt_to_repeat": base} if kind == REPEAT else {})))
                    arguments.append(checker.get_instruction_args() or {})
                finally:
                    random.setstate(state)
            # after a prompt that ends in a block of input (a list, a passage), the instructions
            # start a paragraph of their own, so they do not read as part of that input
            joiner = "\n\n" if "\n" in base.strip() else " "
            rows.append({"key": first_key + len(rows), "prompt": joiner.join([base.rstrip(), " ".join(descriptions)]),
                         "instruction_id_list": chosen, "kwargs": arguments})
    return rows


def _draw_kinds(rng, kinds: list[str], per_prompt: int, used: set[str], conflicts: dict) -> list[str]:
    chosen: list[str] = []
    for kind in sorted(rng.sample(kinds, len(kinds)), key=lambda k: k in used):  # stable: unused first
        if len(chosen) == per_prompt:
            break
        if not any(kind in conflicts.get(c, ()) or c in conflicts.get(kind, ()) for c in chosen):
            chosen.append(kind)
    return chosen


def part_of(prompt: str, eval_share: float, salt: str = "rlhf-bases") -> str:
    """"eval" for a share `eval_share` of prompts, chosen by a hash of the prompt (the same on
    every machine and for any file that holds it), else "train": the base prompts that training
    rows are composed from never appear in the evaluation's rows, whatever instructions follow."""
    digest = hashlib.sha256(f"{salt}\0{prompt.strip()}".encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_share else "train"


def main(argv: list[str] | None = None) -> int:
    """python -m rlhf.data.instructions: compose an ifeval file from a file of prompts."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m rlhf.data.instructions", description=(
        "Write prompts with verifiable instructions (data.format=ifeval) composed from a JSONL file "
        "of prompts: each prompt followed by instructions drawn from IFEval's checks, deterministic by seed."))
    parser.add_argument("prompts", type=Path, help="JSONL, one prompt a line (its text at --field)")
    parser.add_argument("out", type=Path, help="the ifeval file to write")
    parser.add_argument("--field", default="prompt", help="the prompt's key (dotted for nested: meta.question)")
    parser.add_argument("--kinds", nargs="+", help="instruction ids to draw from (default: every one that runs here)")
    parser.add_argument("--exclude", nargs="+", default=[], help="instruction ids never drawn (held out for evaluation)")
    parser.add_argument("--per-prompt", type=int, default=1)
    parser.add_argument("--draws", type=int, default=1, help="rows per prompt, each with other instructions")
    parser.add_argument("--part", choices=["all", "train", "eval"], default="all", help=(
        "compose only the prompts of one part: a hash of each prompt puts --eval-share of them in eval, the "
        "rest in train, so a training file and an evaluation file made from one source share no base prompt"))
    parser.add_argument("--eval-share", type=float, default=0.35)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list-kinds", action="store_true", help="print the kinds that run here, and why others do not")
    a = parser.parse_args(argv)
    if a.list_kinds:
        print("\n".join([*runnable_kinds(), *(f"{k}  (left out: {why})" for k, why in unavailable().items())]))
        return 0
    prompts = []
    for n, line in enumerate(a.prompts.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        value = json.loads(line)
        for part in a.field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, str) or not value.strip():
            parser.error(f"{a.prompts} line {n}: no text at {a.field!r} (set --field)")
        prompts.append(value)
    kinds = [k for k in (a.kinds or runnable_kinds()) if k not in a.exclude]
    if a.part != "all":
        prompts = [p for p in prompts if part_of(p, a.eval_share) == a.part]
    try:
        rows = compose(prompts, kinds=kinds, per_prompt=a.per_prompt, seed=a.seed, draws=a.draws)
    except ValueError as e:
        parser.error(str(e))
    a.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{a.out}: {len(rows)} prompts from {len(prompts)} bases, {sum(len(r['instruction_id_list']) for r in rows)} instructions "
          f"from {len(kinds)} kinds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
