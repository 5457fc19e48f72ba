"""Reading rows from a source, and the adapters that turn one row into records.

Rows come with a location ("file.jsonl line 12", "org/ds[train] row 7") so that every error
can name where the bad record is. JSON lines are parsed here, line by line, rather than by
`datasets`, because its JSON reader reports a bad line without its number.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from rlhf.data.records import (
    DataError,
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

Row = dict[str, Any]
# (location, row) or (location, RecordError) for a row that could not even be parsed
RowItem = tuple[str, "Row | RecordError"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
FILE_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet", ".csv")


class SourceError(DataError):
    """The source as a whole cannot be read (missing file, unknown format)."""


def read_rows(cfg) -> tuple[str, Iterator[RowItem]]:
    """(label, rows) for a SourceConfig whose format reads records from `path` or `hub_id`.
    A file that cannot be read as a whole (not gzip, not Parquet, empty, a CSV that does not
    parse) is a SourceError naming it; a line that cannot be read is a bad record of its own."""
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
            if not f.is_file():
                raise SourceError(f"{f}: a folder, not a file (point data.path at the folder above it to read "
                                  "the files inside)")
        items = (item for f in files for item in _read_checked(f, cfg.encoding))
        return str(path), _limit(items, cfg.max_records)
    return cfg.hub_id, _limit(_read_hub(cfg), cfg.max_records)


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def _limit(items: Iterator[RowItem], n: int | None) -> Iterator[RowItem]:
    for i, item in enumerate(items):
        if n is not None and i >= n:
            return
        yield item


def _read_checked(path: Path, encoding: str) -> Iterator[RowItem]:
    """_read_file, with a broken file turned into one SourceError naming it and where."""
    rows = 0
    try:
        for item in _read_file(path, encoding):
            rows += 1
            yield item
    except SourceError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # gzip: not gzip, truncated, corrupt
        after = f" after {rows} row(s)" if rows else ""
        raise SourceError(f"{path}: cannot be read{after}: {e}. Is it a complete "
                          f"{'gzip file' if path.suffix == '.gz' else 'file'}? Download or write it again") from None
    if rows == 0:
        raise SourceError(f"{path}: no records (an empty file); remove it or point data.path elsewhere")


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"


def _text_encoding(encoding: str) -> str:
    """UTF-8 files may start with a byte-order mark (Windows tools write one): utf-8-sig reads
    either."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decode(data: bytes, encoding: str, where: str) -> str:
    try:
        return data.decode(_text_encoding(encoding))
    except UnicodeDecodeError as e:
        raise SourceError(f"{where}: {_encoding_problem(e, encoding, 0)}") from None


def _encoding_problem(e: UnicodeDecodeError, encoding: str, offset: int) -> str:
    return (f"not valid {encoding} at byte offset {offset + e.start} (byte 0x{e.object[e.start:e.start + 1].hex()}). "
            "If the file is in another encoding, name it with data.encoding=<codec> (e.g. latin-1, cp1252, utf-16)")


def _read_file(path: Path, encoding: str) -> Iterator[RowItem]:
    kind = _suffix(path)
    if kind in JSONL_SUFFIXES:
        yield from _read_jsonl(path, encoding)
    elif kind == ".json":
        with _open_binary(path) as f:
            text = _decode(f.read(), encoding, str(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
                              " (a file with one object per line should be named .jsonl)") from e
        except (ValueError, RecursionError) as e:
            raise SourceError(f"{path}: JSON this reader refuses: {_json_limit(e)}") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]} wrappers
        if not isinstance(data, list):
            raise SourceError(f"{path}: expected a JSON array of records (or {{\"data\": [...]}})")
        for i, row in enumerate(data):
            yield f"{path} record {i}", row if isinstance(row, dict) else not_an_object(row)
    else:  # parquet, csv: the datasets library reads them with their column types
        import datasets

        options = {"encoding": _text_encoding(encoding)} if kind == ".csv" else {}
        try:
            ds = datasets.load_dataset(kind[1:], data_files=str(path), split="train", **options)
        except Exception as e:  # pyarrow's and pandas' parse errors, wrapped by datasets
            raise SourceError(f"{path}: not a readable {kind[1:]} file: {_root_cause(e)}") from None
        for i, row in enumerate(ds):
            yield f"{path} row {i + 1}", row


def _read_jsonl(path: Path, encoding: str) -> Iterator[RowItem]:
    """One record a line. Encodings that keep "\\n" a single byte (UTF-8, Latin-1, cp1252, ...)
    are split into lines as bytes, so a bad byte is reported with its line and offset and only
    that line is lost; others (UTF-16/32) are decoded as a whole stream."""
    if "\n".encode(encoding) != b"\n":
        with _open_binary(path) as f:
            text = _decode(f.read(), encoding, str(path))
        lines = ((number, line, None) for number, line in enumerate(text.split("\n"), start=1))
    else:
        lines = _byte_lines(path, encoding)
    for number, line, error in lines:
        if error is not None:
            yield f"{path} line {number}", error
        elif line.strip():  # blank lines (a trailing newline) hold no record
            yield f"{path} line {number}", _parse_json_object(line)


def _byte_lines(path: Path, encoding: str) -> Iterator[tuple[int, str, "RecordError | None"]]:
    offset = 0
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8) and codecs.lookup(encoding).name == "utf-8":
                raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            try:
                yield number, raw.decode(encoding), None
            except UnicodeDecodeError as e:
                yield number, "", RecordError("(line)", _encoding_problem(e, encoding, offset), "invalid_encoding")
            offset += len(raw)


def _read_hub(cfg) -> Iterator[RowItem]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.hub_id, name=cfg.hub_name, data_dir=cfg.hub_data_dir,
                                   split=cfg.hub_split, revision=cfg.hub_revision)
    except Exception as e:  # offline, unknown id, gated, wrong split: the datasets library's many errors
        raise SourceError(f"data.hub_id={cfg.hub_id!r} (split {cfg.hub_split!r}) cannot be loaded: "
                          f"{_root_cause(e)}. Without network, download it where there is one "
                          f"(`huggingface-cli download --repo-type dataset {cfg.hub_id}`) and set "
                          "HF_DATASETS_OFFLINE=1, or point data.path at a local copy") from None
    for i, row in enumerate(ds):
        yield f"{cfg.hub_id}[{cfg.hub_split}] row {i}", row


def _parse_json_object(line: str) -> "Row | RecordError":
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return RecordError("(line)", f"invalid JSON at column {e.colno}: {e.msg}", "invalid_json")
    except (ValueError, RecursionError) as e:  # a number of over 4300 digits; nesting deeper than Python's stack
        return RecordError("(line)", f"JSON this reader refuses: {_json_limit(e)}", "invalid_json")
    return row if isinstance(row, dict) else not_an_object(row)


def _json_limit(e: Exception) -> str:
    return "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]


def not_an_object(value: object) -> RecordError:
    return RecordError("(record)", f"expected a JSON object, got {type(value).__name__}", "wrong_type")


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
}
