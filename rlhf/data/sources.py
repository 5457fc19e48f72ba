"""Reading rows from a source, and the adapters that turn one row into records.

Rows come with a location ("file.jsonl line 12", "org/ds[train] row 7") so that every error
can name where the bad record is. JSON lines are parsed here, line by line, rather than by
`datasets`, because its JSON reader reports a bad line without its number.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from rlhf.data.records import (
    DataError,
    Demonstration,
    Prompt,
    Record,
    RecordError,
    check_message,
    check_prompt,
    check_response,
    make_comparison,
)

Row = dict[str, Any]
# (location, row) or (location, RecordError) for a row that could not even be parsed
RowItem = tuple[str, "Row | RecordError"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
FILE_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet", ".csv")


class SourceError(DataError):
    """The source as a whole cannot be read (missing file, unknown format)."""


def read_rows(cfg) -> tuple[str, Iterator[RowItem]]:
    """(label, rows) for a DataConfig whose format reads records from `path` or `hub_id`."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise SourceError(f"data.path={cfg.path!r}: no such file or folder")
        files = sorted(p for p in path.iterdir() if _suffix(p) in FILE_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise SourceError(f"data.path={cfg.path!r}: no {'/'.join(FILE_SUFFIXES)} files in this folder")
        for f in files:
            if _suffix(f) not in FILE_SUFFIXES:
                raise SourceError(f"data.path={str(f)!r}: unsupported file type; use one of "
                                  f"{', '.join(FILE_SUFFIXES)} (optionally .gz)")
        return str(path), _limit((item for f in files for item in _read_file(f)), cfg.max_records)
    return cfg.hub_id, _limit(_read_hub(cfg), cfg.max_records)


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def _limit(items: Iterator[RowItem], n: int | None) -> Iterator[RowItem]:
    for i, item in enumerate(items):
        if n is not None and i >= n:
            return
        yield item


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _read_file(path: Path) -> Iterator[RowItem]:
    kind = _suffix(path)
    if kind in JSONL_SUFFIXES:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # blank lines (a trailing newline) hold no record
                yield f"{path} line {number}", _parse_json_object(line)
    elif kind == ".json":
        with _open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
                                  " (a file with one object per line should be named .jsonl)") from e
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]} wrappers
        if not isinstance(data, list):
            raise SourceError(f"{path}: expected a JSON array of records (or {{\"data\": [...]}})")
        for i, row in enumerate(data):
            yield f"{path} record {i}", row if isinstance(row, dict) else _not_an_object(row)
    else:  # parquet, csv: the datasets library reads them with their column types
        import datasets

        ds = datasets.load_dataset(kind[1:], data_files=str(path), split="train")
        for i, row in enumerate(ds):
            yield f"{path} row {i + 1}", row


def _read_hub(cfg) -> Iterator[RowItem]:
    import datasets

    ds = datasets.load_dataset(cfg.hub_id, name=cfg.hub_name, data_dir=cfg.hub_data_dir,
                               split=cfg.hub_split, revision=cfg.hub_revision)
    for i, row in enumerate(ds):
        yield f"{cfg.hub_id}[{cfg.hub_split}] row {i}", row


def _parse_json_object(line: str) -> "Row | RecordError":
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return RecordError("(line)", f"invalid JSON at column {e.colno}: {e.msg}", "invalid_json")
    return row if isinstance(row, dict) else _not_an_object(row)


def _not_an_object(value: object) -> RecordError:
    return RecordError("(record)", f"expected a JSON object, got {type(value).__name__}", "wrong_type")


# ---- adapters: one row -> records -----------------------------------------------------------


def get(row: Row, name: str, *, required: bool = True) -> Any:
    """The value at a (dotted) field name; a missing required field is a RecordError."""
    value: Any = row
    for part in name.split("."):
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
    turns = [check_message(m, f"{f.messages}[{i}]") for i, m in enumerate(value)]
    if len(turns) < 2 or turns[-1]["role"] != "assistant":
        raise RecordError(f.messages, "needs a prompt then a final assistant turn to imitate",
                          "bad_messages")
    prompt = check_prompt(turns[:-1], f.messages)
    return [Demonstration(prompt, turns[-1]["content"], source)]


def pairwise(row: Row, f, source: str) -> list[Record]:
    prompt = check_prompt(get(row, f.prompt), f.prompt)
    chosen = check_response(get(row, f.chosen), f.chosen)
    rejected = check_response(get(row, f.rejected), f.rejected)
    margin = get(row, f.margin, required=False)
    return [make_comparison(prompt, [chosen, rejected], [0, 1], f.rejected, margin, source)]


def ranked(row: Row, f, source: str) -> list[Record]:
    prompt = check_prompt(get(row, f.prompt), f.prompt)
    items = get(row, f.responses)
    if not isinstance(items, list):
        raise RecordError(f.responses, f"expected a list, got {type(items).__name__}", "wrong_type")
    if all(isinstance(x, str) for x in items):  # strings, best first, no ties
        texts = [check_response(x, f"{f.responses}[{i}]") for i, x in enumerate(items)]
        ranks = list(range(len(texts)))
    else:  # objects with a text and a rank (OASST: replies carry a `rank`, 0 = best)
        pairs = []
        for i, x in enumerate(items):
            name = f"{f.responses}[{i}]"
            if not isinstance(x, dict):
                raise RecordError(name, "mix of strings and objects; use one or the other", "wrong_type")
            rank = get(x, f.response_rank)
            if isinstance(rank, bool) or not isinstance(rank, (int, float)):
                raise RecordError(f"{name}.{f.response_rank}", f"expected a number, got "
                                  f"{type(rank).__name__}", "wrong_type")
            pairs.append((rank, check_response(get(x, f.response_text), f"{name}.{f.response_text}")))
        pairs.sort(key=lambda p: p[0])  # stable: equal ranks keep their order, and are ties
        distinct = sorted({r for r, _ in pairs})
        texts, ranks = [t for _, t in pairs], [distinct.index(r) for r, _ in pairs]
    if len(set(ranks)) < 2 and len(texts) >= 2:
        raise RecordError(f.responses, "every response has the same rank, so there is nothing to "
                          "learn from this comparison", "all_tied")
    return [make_comparison(prompt, texts, ranks, f.responses, None, source)]


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
        if not turns[-1]["content"]:
            raise RecordError(name, "the last Assistant turn is empty", "empty_response")
    if chosen[:-1] != rejected[:-1]:
        raise RecordError(f.rejected, "chosen and rejected differ before their last Assistant turn",
                          "transcripts_differ")
    prompt = check_prompt(chosen[:-1], f.chosen)
    return [make_comparison(prompt, [chosen[-1]["content"], rejected[-1]["content"]], [0, 1],
                            f.rejected, None, source)]


def prompt_only(row: Row, f, source: str) -> list[Record]:
    return [Prompt(check_prompt(get(row, f.prompt), f.prompt), source)]


ADAPTERS: dict[str, Callable[[Row, Any, str], list[Record]]] = {
    "demonstration": demonstration,
    "messages": messages,
    "pairwise": pairwise,
    "ranked": ranked,
    "hh_rlhf": hh_rlhf,
    "prompt": prompt_only,
}
