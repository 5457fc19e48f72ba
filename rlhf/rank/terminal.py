"""Ranking in the terminal, one person: each unranked record's prompt and numbered answers, typed
best first ("2 1 3 4"), "=" for a tie ("2=1 3 4"), "s" to skip it for now, "d" to drop it from
the file (answers not worth comparing), "q" to stop. Every answer is saved at once (the file
rewritten atomically), so stopping loses nothing and a rerun goes on with what is left.
`by_rule` ranks by length instead of a person: a stand-in for scripted tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlhf.rank import collected


def parse_order(text: str, k: int) -> list[int] | None:
    """'2=1 3 4' -> ranks per answer (answer 2 and 1 tie at rank 0, 3 is 1, 4 is 2), or None when
    the text does not name each of the k answers once."""
    groups = [[int(x) - 1 for x in group.split("=") if x.isdigit()] for group in text.split()]
    named = [i for group in groups for i in group]
    if sorted(named) != list(range(k)) or any(not group for group in groups):
        return None
    ranks = [0] * k
    for rank, group in enumerate(groups):
        for i in group:
            ranks[i] = rank
    return ranks


def by_rule(record: dict, rule: str) -> list[int]:
    """Ranks by response length in characters (ties equal): shorter or longer first."""
    lengths = [len(r["text"]) for r in record["responses"]]
    distinct = sorted(set(lengths), reverse=rule == "longer")
    return [distinct.index(n) for n in lengths]


def rank_file(path: Path, rule: str | None, who: str) -> int:
    records = collected.read(path)
    todo = [r for r in records if collected.unranked(r)]
    print(f"{path}: {len(records)} records, {len(todo)} unranked", file=sys.stderr)
    done = dropped = 0
    for record in todo:
        ranks = by_rule(record, rule) if rule else _ask(record)
        if ranks is None:  # quit
            break
        if ranks == "skip":
            continue
        if ranks == "drop" or len(set(ranks)) < 2:  # all tied: nothing for a reward model to learn
            records.remove(record)
            dropped += 1
        else:
            for response, rank in zip(record["responses"], ranks):
                response["rank"] = rank
            record["labeller"] = who
            done += 1
        if not rule:  # a person's work is saved after every record
            collected.save(path, records)
    collected.save(path, records)
    left = sum(collected.unranked(r) for r in records)
    print(f"ranked {done}, dropped {dropped}; {left} still unranked", file=sys.stderr)
    return 0


def _ask(record: dict):
    prompt = record["prompt"] if isinstance(record["prompt"], str) else record["prompt"][-1]["content"]
    print(f"\n> {prompt}")
    for i, response in enumerate(record["responses"], start=1):
        print(f"  [{i}] {response['text']}")
    k = len(record["responses"])
    while True:
        try:
            text = input("best first (e.g. 2 1 3, 2=1 3 for a tie; s skip, d drop, q quit): ").strip()
        except EOFError:
            return None
        if text in ("q", "s", "d"):
            return {"q": None, "s": "skip", "d": "drop"}[text]
        ranks = parse_order(text, k)
        if ranks is not None and len(set(ranks)) > 1:
            return ranks
        print(f"  name each of the {k} answers once, best first, not all tied (d drops a record not worth ranking)")
