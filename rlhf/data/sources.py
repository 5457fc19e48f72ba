"""Reading rows from a source, and the adapters that turn one row into records.

Rows come with a location ("file.jsonl line 12", "org/ds[train] row 7") so that every error
can name where the bad record is. JSON lines are parsed here, line by line, rather than by
`datasets`, because its JSON reader reports a bad line without its number.
"""

from __future__ import annotations

import gzip
import logging
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

log = logging.getLogger(__name__)

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
        chosen, rejected = check_response(chosen, f.chosen), check_response(rejected, f.rejected)
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
    answer = check_response(last.get("content"), f"{field}[{len(value) - 1}].content")
    return [check_message(m, f"{field}[{i}]") for i, m in enumerate(value[:-1])], answer


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


def oasst_conversations(rows: Iterator[RowItem], f) -> Iterator[RowItem]:
    """OpenAssistant trees, one message a row (oasst1/oasst2: message_id, parent_id, role
    prompter|assistant, text, rank) -> one `ranked` row for each prompter message with at least
    two ranked assistant replies: the conversation from the tree's root to it is the prompt, the
    replies ordered by `rank` (0 = best) the responses. Replies the labellers did not rank (rank
    null) cannot be ordered, so they are left out; the log says how many. Reads the whole source
    first: a reply may come before its parent."""
    messages: dict[str, tuple[str, Row]] = {}
    for location, row in rows:
        if isinstance(row, RecordError):
            yield location, row
            continue
        try:
            key = get(row, f.message_id)
            role = get(row, f.role)
            if role not in ("prompter", "assistant"):
                raise RecordError(f.role, f"expected 'prompter' or 'assistant', got {role!r}", "bad_messages")
        except RecordError as e:
            yield location, e
            continue
        messages[key] = (location, row)
    replies: dict[str, list[Row]] = {}
    for _, row in messages.values():
        if row.get(f.role) == "assistant" and row.get(f.parent_id) is not None:
            replies.setdefault(row[f.parent_id], []).append(row)
    unranked = 0
    for key, (location, row) in messages.items():
        ranked_replies = [r for r in replies.get(key, []) if r.get(f.response_rank) is not None]
        unranked += len(replies.get(key, [])) - len(ranked_replies)
        if row.get(f.role) != "prompter" or len(ranked_replies) < 2:
            continue
        path, node = [], row
        while node is not None:
            path.append({"role": "user" if node.get(f.role) == "prompter" else "assistant",
                         "content": node.get(f.response_text)})
            parent = node.get(f.parent_id)
            node = messages[parent][1] if parent in messages else None
            if parent is not None and node is None:
                yield location, RecordError(f.parent_id, f"the conversation's message {parent!r} is not in the "
                                            "source (a partial tree)", "missing_parent")
                break
        else:
            yield location, {f.prompt: path[::-1], f.responses: [
                {f.response_text: r.get(f.response_text), f.response_rank: r.get(f.response_rank)}
                for r in ranked_replies]}
    if unranked:
        log.info("oasst: %d assistant replies without a rank left out (they cannot be ordered)", unranked)


ADAPTERS: dict[str, Callable[[Row, Any, str], list[Record]]] = {
    "demonstration": demonstration,
    "messages": messages,
    "pairwise": pairwise,
    "ranked": ranked,
    "hh_rlhf": hh_rlhf,
    "oasst": ranked,  # after oasst_conversations has grouped the message rows
    "prompt": prompt_only,
}
