"""Rank the answers `rlhf stage=collect` wrote, in the terminal: `rlhf-rank <comparisons.jsonl>`.

Each unranked record shows its prompt and numbered answers; type them best first ("2 1 3 4"),
with "=" for a tie ("2=1 3 4"), "s" to skip it for now, "d" to drop it from the file (answers
not worth comparing), "q" to stop. Every answer is saved to the
file at once (rewritten atomically), so stopping loses nothing and running it again goes on with
the records still unranked. `--by shorter|longer` ranks every unranked record by a rule instead
of a person (the length heuristic: a stand-in for scripted tests, not a labeller to trust); a
record whose answers are all the same length is dropped.
Any other tool may fill the ranks just as well: each response's "rank", 0 = best, equal = tie
(docs/collect.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlhf.core.artifacts import write_atomic


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


def unranked(record: dict) -> bool:
    return any(r.get("rank") is None for r in record["responses"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-rank", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a comparisons.jsonl written by `rlhf stage=collect`")
    parser.add_argument("--by", choices=("shorter", "longer"), help="rank by a rule instead of asking")
    parser.add_argument("--who", default=None, help="recorded as each ranked record's labeller "
                                                    "(default: your answers: 'person'; --by: 'rule:<rule>')")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"{args.file}: no such file")
    records = []
    for number, line in enumerate(args.file.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                parser.error(f"{args.file} line {number}: not JSON ({e.msg}); is it a file `rlhf stage=collect` wrote?")
    todo = [r for r in records if unranked(r)]
    who = args.who or (f"rule:{args.by}" if args.by else "person")
    print(f"{args.file}: {len(records)} records, {len(todo)} unranked", file=sys.stderr)
    done = dropped = 0
    for record in todo:
        ranks = by_rule(record, args.by) if args.by else _ask(record)
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
        if not args.by:  # a person's work is saved after every record
            _save(args.file, records)
    _save(args.file, records)
    left = sum(unranked(r) for r in records)
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


def _save(path: Path, records: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


if __name__ == "__main__":
    sys.exit(main())
