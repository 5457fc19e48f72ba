"""The file both labelling front ends read and write: `comparisons.jsonl` as `rlhf stage=collect`
wrote it (the data layer's `ranked` format, one prompt a line, each response's `rank` null until
someone ranks it). Read whole, written whole and atomically, so a stop never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rlhf.core.artifacts import write_atomic


class CollectedFileError(ValueError):
    """The file is not one `rlhf stage=collect` wrote: names the file, the line and what is wrong."""


def read(path: Path) -> list[dict]:
    if not path.is_file():
        raise CollectedFileError(f"{path}: no such file")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CollectedFileError(f"{path} line {number}: not JSON ({e.msg}); is it a file "
                                     "`rlhf stage=collect` wrote?") from None
        responses = record.get("responses") if isinstance(record, dict) else None
        if not isinstance(responses, list) or len(responses) < 2 or \
                not all(isinstance(r, dict) and isinstance(r.get("text"), str) for r in responses):
            raise CollectedFileError(f"{path} line {number}: field 'responses': expected a list of two or more "
                                     "objects with a 'text'; is it a file `rlhf stage=collect` wrote?")
        if "prompt" not in record:
            raise CollectedFileError(f"{path} line {number}: field 'prompt' is missing")
        records.append(record)
    return records


def save(path: Path, records: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def unranked(record: dict) -> bool:
    return any(r.get("rank") is None for r in record["responses"])


def key(record: dict) -> str:
    """A record's identity: its prompt and answers, not its line (which a rewrite may move) nor its
    ranks (which labelling fills in)."""
    content = json.dumps([record["prompt"], [r["text"] for r in record["responses"]]], ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:24]


def prompt_text(record: dict) -> str:
    """The prompt as a person reads it: a string, or a conversation's turns one after the other."""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
