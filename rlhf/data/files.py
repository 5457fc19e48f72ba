"""Reading rows from a source: local files (jsonl, json, csv, parquet, any of them gzipped, or a
folder of them) or a hub dataset.

Rows come with a location ("file.jsonl line 12", "org/ds[train] row 7") so that every error
can name where the bad record is. JSON lines are parsed here, line by line, rather than by
`datasets`, because its JSON reader reports a bad line without its number. The adapters that
turn a row into records are in sources.py.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from rlhf.data.records import DataError, RecordError

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


def builtin(relative: str) -> str:
    """A file of the project's data/ (shipped in the wheel as rlhf/builtin_data/), found wherever
    the command runs from: configs name one as `${builtin_data:ifeval/x.jsonl}`."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "builtin_data"
    return str((installed if installed.is_dir() else package.parent / "data") / relative)
