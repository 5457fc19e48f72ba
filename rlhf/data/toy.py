"""The built-in toy task: sort a short list of digits, ascending or descending as instructed.

    prompt   "sort ascending: 3 1 4 1 5"     gold answer "1 1 3 4 5"
    prompt   "sort descending: 2 7 1"        gold answer "7 2 1"

Chosen because a tiny model learns it on two CPU cores in minutes, yet it has the failures an
RLHF user watches for, visible by eye in the samples: ignoring the instruction, items out of
order, stopping early and rambling past the answer. Each flaw is also visible locally, which
is what lets a tiny reward model learn to judge answers (a wrong digit in a reversed list, say,
is not: that task is available as "reverse" but not in the default mix). The gold scorer reads only the prompt and the response text,
so any stage (and any policy) can be scored. See data/README.md.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Iterator

from rlhf.data.records import Comparison, Demonstration, PromptLike, Record, simulated_ranking

DIGITS = "0123456789"
# task name -> (instruction as the prompt shows it, the answer for a list of digits)
TASKS: dict[str, tuple[str, Callable[[list[str]], list[str]]]] = {
    "ascending": ("sort ascending", sorted),
    "descending": ("sort descending", lambda items: sorted(items, reverse=True)),
    # Harder for a small reward model: a wrong item is not visible locally, so it is not in
    # the default mix (data.toy.tasks).
    "reverse": ("reverse", lambda items: items[::-1]),
}
_PROMPT_RE = re.compile(r"^(?P<instruction>[a-z ]+): (?P<items>\d(?: \d)*)$")
_BY_INSTRUCTION = {instruction: answer for instruction, answer in TASKS.values()}
# Each flaw is a failure a reader spots at a glance: two neighbours out of order, stopping one
# item early, or not stopping (one item too many).
FLAWS = ("swap", "drop_last", "extra_item")


def parse_prompt(prompt: PromptLike) -> tuple[str, list[str]]:
    """(instruction, items) of a toy prompt such as 'sort ascending: 3 1 2'."""
    text = (prompt if isinstance(prompt, str) else prompt[-1]["content"]).strip()
    match = _PROMPT_RE.match(text)
    if not match or match["instruction"] not in _BY_INSTRUCTION:
        raise ValueError(f"not a toy-task prompt: {text!r} (expected e.g. 'sort ascending: 3 1 2')")
    return match["instruction"], match["items"].split()


def answer(prompt: PromptLike) -> str:
    instruction, items = parse_prompt(prompt)
    return " ".join(_BY_INSTRUCTION[instruction](items))


def gold_score(prompt: PromptLike, response: str) -> float:
    """Share of positions right, over the longer of answer and response: 1.0 only for the exact
    answer; a missing or an extra item costs as much as a wrong one, so stopping on time counts."""
    target = answer(prompt).split()
    got = response.split()
    right = sum(a == b for a, b in zip(target, got))
    return right / max(len(target), len(got))


def flaw(items: list[str], kind: str, rng: random.Random) -> list[str]:
    """One deliberate mistake of a named kind."""
    items = list(items)
    if kind == "swap" and len(set(items)) > 1:
        i = rng.choice([i for i in range(len(items) - 1) if items[i] != items[i + 1]])
        items[i], items[i + 1] = items[i + 1], items[i]
    elif kind == "drop_last" and len(items) > 1:
        items.pop()
    else:  # extra_item, and the fallback when another flaw cannot apply
        items.append(rng.choice(DIGITS))
    return items


def habit(items: list[str], kinds: list[str]) -> tuple[list[str], str]:
    """A systematic demonstrator's mistake: the first of `kinds` that applies, always in the same
    place (the first two different neighbours swapped; the last item dropped; the last repeated),
    so that it is learnable. Returns (items, the kind made)."""
    items = list(items)
    for kind in kinds:
        if kind == "swap" and len(set(items)) > 1:
            i = next(i for i in range(len(items) - 1) if items[i] != items[i + 1])
            items[i], items[i + 1] = items[i + 1], items[i]
            return items, kind
        if kind == "drop_last" and len(items) > 1:
            return items[:-1], kind
        if kind == "extra_item":
            return items + items[-1:], kind
    return items, "none"


def demonstration_flaw(prompt: PromptLike, response: str) -> str:
    """Which flaw a demonstration shows against the gold answer: exact, swap, drop_last,
    extra_item, or other (prepare counts them: data.toy's demonstrator settings at work)."""
    target, got = answer(prompt).split(), response.split()
    if got == target:
        return "exact"
    if got == target[:-1]:
        return "drop_last"
    if len(got) == len(target) + 1 and got[:-1] == target:
        return "extra_item"
    differ = [i for i in range(len(target)) if len(got) == len(target) and got[i] != target[i]]
    if len(differ) == 2 and differ[1] == differ[0] + 1 and got[differ[0]] == target[differ[1]] \
            and got[differ[1]] == target[differ[0]]:
        return "swap"
    return "other"


def generate(cfg) -> Iterator[Record]:
    """Yields one Demonstration and one K-wise Comparison per distinct prompt, deterministically
    for a given `cfg` (a ToyConfig). The splitter later sends each prompt to one split."""
    space = len(cfg.tasks) * sum(10**n for n in range(cfg.min_items, cfg.max_items + 1))
    if cfg.num_prompts > space:
        raise ValueError(f"data.toy.num_prompts={cfg.num_prompts} exceeds the {space} distinct "
                         "prompts these tasks and lengths allow; lower it or widen min/max_items")
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    while len(seen) < cfg.num_prompts:
        items = [rng.choice(DIGITS) for _ in range(rng.randint(cfg.min_items, cfg.max_items))]
        prompt = f"{TASKS[rng.choice(cfg.tasks)][0]}: {' '.join(items)}"
        if prompt in seen:
            continue
        seen.add(prompt)
        target = answer(prompt).split()
        shown = target
        if rng.random() < cfg.flawed_fraction:
            shown = flaw(target, rng.choice(cfg.demo_flaws), rng) if cfg.demo_flaw_mode == "random" \
                else habit(target, cfg.demo_flaws)[0]
        yield Demonstration(prompt, " ".join(shown), source="toy")
        yield _comparison(prompt, target, cfg, rng)


def _comparison(prompt: str, target: list[str], cfg, rng: random.Random) -> Comparison:
    k = cfg.responses_per_comparison
    # Half the comparisons include the exact answer; the rest rank flawed answers only, as
    # human labellers mostly do.
    texts = {" ".join(target)} if rng.random() < 0.5 else set()
    attempts = 0
    while len(texts) < k:
        attempts += 1
        items = target
        for _ in range(rng.randint(1, 3)):
            items = flaw(items, rng.choice(FLAWS), rng)
        texts.add(" ".join(items))
        if attempts > 1000:  # unreachable for 3+ digits; guards a degenerate config
            raise ValueError(f"cannot make {k} distinct responses for {prompt!r}")
    responses, ranks = gold_ranking(prompt, sorted(texts), cfg.label_noise, rng)
    return Comparison(prompt, tuple(responses), tuple(ranks), None, "toy")


def gold_ranking(prompt: PromptLike, texts: list[str], label_noise: float, rng: random.Random
                 ) -> tuple[list[str], list[int]]:
    """The simulated labeller: `texts` best-first by the gold score with their ranks (equal
    scores tie), and with probability `label_noise` one adjacent non-tied pair swapped (the ranks
    stay in stated order, so the two swapped answers carry each other's rank). The built-in
    comparisons and `rlhf stage=collect` (collect.labeller=gold) both rank this way."""
    return simulated_ranking(texts, [gold_score(prompt, t) for t in texts], label_noise, rng)


def wrong_digit(prompt: PromptLike, rng: random.Random) -> str:
    """The exact answer with one item replaced by another digit: the flaw a tiny reward model
    misses (it is not visible locally, as a swap or a missing item is), and that stage 3 learns
    to produce against such a model."""
    items = answer(prompt).split()
    i = rng.randrange(len(items))
    items[i] = rng.choice([d for d in DIGITS if d != items[i]])
    return " ".join(items)


def wrong_digit_near_miss(prompt: PromptLike, response: str) -> bool:
    """Whether `response` is the exact answer with one item replaced (wrong_digit's flaw)."""
    target, got = answer(prompt).split(), response.split()
    return len(got) == len(target) and sum(a != b for a, b in zip(target, got)) == 1
