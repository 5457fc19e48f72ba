"""The data layer fuzzed (hypothesis): for every format and file type, files of arbitrary bytes,
random JSON shapes and types, records with fields of the wrong kind, other encodings and BOMs,
truncated gzip, very long lines, deep nesting, huge numbers and NaN/Infinity literals. Each file
either loads, with its counts adding up, or fails with a DataError of one line naming the file;
never another exception, never a hang (SECONDS per example).

CI runs FUZZ_EXAMPLES (default 40, fixed) examples per format; `make fuzz` runs 2,000 random ones per
format (FUZZ_RANDOM=1); FUZZ_WHY=1 prints why each refused file was refused.
"""

import codecs
import gzip
import json
import os
import signal
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.data import DataError, load_data
from tests.conftest import EXAMPLES, data_config

EXAMPLES_PER_FORMAT = int(os.environ.get("FUZZ_EXAMPLES", "40"))
SECONDS = 20  # per example: a hang fails the example instead of the whole run
FUZZ = settings(max_examples=EXAMPLES_PER_FORMAT, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck), database=None)

# ---- the pieces files are made of -------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\n", "\x00", "\ufeff", "\u202e", "🙂" * 10, "\n\nHuman:", "\n\nAssistant:", "é" * 30])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | text | st.just(10**400)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                      max_leaves=12)
roles = st.sampled_from(["user", "assistant", "system", "prompter", "bot", None, 3])
message = st.fixed_dictionaries({}, optional={"role": roles, "content": text | values})
messages = st.lists(message, max_size=5) | values


@st.composite
def transcript(draw):
    turns = draw(st.lists(st.tuples(st.sampled_from(["Human", "Assistant", "human", "System"]), text), max_size=6))
    body = "".join(f"\n\n{role}: {content}" for role, content in turns)
    return body.lstrip() if draw(st.booleans()) else body


def shaped(fields: dict) -> st.SearchStrategy:
    """A record with the format's fields, each the right kind or anything at all, any of them missing."""
    return st.fixed_dictionaries({}, optional={name: st.one_of(right, right, right, values)
                                               for name, right in fields.items()})


ranked_item = st.fixed_dictionaries({}, optional={"text": text | values, "rank": st.integers(-2, 4) | values})
oasst_row = st.fixed_dictionaries({}, optional={
    "message_id": st.sampled_from(["p1", "a1", "a2", "p2"]) | values, "parent_id": st.sampled_from([None, "p1", "a1"]) | values,
    "role": st.sampled_from(["prompter", "assistant"]) | values, "text": text | values, "rank": st.integers(0, 3) | values,
    "lang": st.sampled_from(["en", "de"]) | values, "deleted": st.booleans() | values,
    "review_result": st.booleans() | values, "synthetic": st.booleans() | values})


def tree(depth: int = 2) -> st.SearchStrategy:
    node = {"message_id": text, "role": st.sampled_from(["prompter", "assistant"]), "text": text,
            "rank": st.integers(0, 3) | st.none()}
    if depth:
        node["replies"] = st.lists(tree(depth - 1), max_size=3)
    return shaped(node)


RECORDS = {
    "pairwise": shaped({"prompt": text, "chosen": text | messages, "rejected": text | messages, "margin": st.floats()}),
    "ranked": shaped({"prompt": text | messages, "responses": st.lists(text, max_size=4) | st.lists(ranked_item, max_size=4),
                      "labels": st.lists(st.fixed_dictionaries({"ranks": st.lists(st.integers(0, 3), max_size=4)}), max_size=3)}),
    "demonstration": shaped({"prompt": text | messages, "response": text}),
    "messages": shaped({"messages": messages}),
    "prompt": shaped({"prompt": text | messages}),
    "hh_rlhf": shaped({"chosen": transcript(), "rejected": transcript()}),
    "oasst": oasst_row,
    "oasst_trees": shaped({"message_tree_id": text, "prompt": tree()}),
    # IFEval's layout: real ids and argument names beside arbitrary ones and arbitrary values
    "ifeval": shaped({"prompt": text | messages,
                      "instruction_id_list": st.lists(st.sampled_from(["punctuation:no_comma", "keywords:frequency",
                                                                       "detectable_format:number_bullet_lists",
                                                                       "length_constraints:number_sentences"]) | text,
                                                      max_size=3),
                      "kwargs": st.lists(st.dictionaries(st.sampled_from(["keyword", "frequency", "relation",
                                                                          "num_bullets"]) | text, values), max_size=3)}),
}

# Lines that break JSON itself: huge numbers, deep nesting, NaN/Infinity, cut objects, not JSON.
nasty_lines = st.sampled_from([
    "1" * 5000, "-" + "9" * 4400, "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "NaN", "-Infinity",
    '{"prompt": NaN, "chosen": Infinity, "rejected": -Infinity, "margin": NaN}', '{"prompt": "p", "chosen": "a",',
    "\ufeff{}", '"just a string"', "[1, 2]", "null", "x" * 200_000, '{"prompt": "' + "p" * 300_000 + '"}',
]) | text.map(lambda t: t.replace("\n", " "))


@st.composite
def jsonl_bytes(draw, records):
    lines = draw(st.lists(records.map(lambda r: json.dumps(r, allow_nan=True)) | nasty_lines, min_size=1, max_size=6))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def file_bytes(draw, records, kind: str):
    """The bytes of a file of `kind` (jsonl, json, csv, parquet): well formed around random records,
    or arbitrary bytes; then perhaps in another encoding or with a BOM."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=3000)), "utf-8"
    rows = draw(st.lists(records, min_size=1, max_size=6))
    if kind == "jsonl":
        data = draw(jsonl_bytes(records))
    elif kind == "json":
        data = json.dumps(draw(st.sampled_from([rows, {"data": rows}, rows[:1], "text"])), allow_nan=True).encode()
    elif kind == "csv":
        names = sorted({k for r in rows for k in r}) or ["prompt"]
        data = ("\n".join([",".join(names)] + [",".join(json.dumps(r.get(n, ""), allow_nan=True) for n in names)
                                                for r in rows])).encode("utf-8", "surrogatepass")
    else:  # parquet: columns of one type each, or the bytes of something else
        try:
            sink = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pylist(rows), sink)
            data = sink.getvalue().to_pybytes()
        except Exception:  # mixed types pyarrow cannot make a column of: a cut file instead
            data = b"PAR1" + json.dumps(rows, allow_nan=True).encode("utf-8", "surrogatepass")[:200]
    encoding = "utf-8"
    if kind != "parquet":
        choice = draw(st.sampled_from(["plain", "bom", "latin-1", "utf-16", "cp1252 declared", "utf-16 undeclared"]))
        decoded = data.decode("utf-8", "replace")
        if choice == "bom":
            data = codecs.BOM_UTF8 + data
        elif choice in ("latin-1", "utf-16", "cp1252 declared"):
            encoding = choice.split()[0]
            data = decoded.encode(encoding, "replace")
        elif choice == "utf-16 undeclared":
            data = decoded.encode("utf-16")
    return data, encoding


def gzipped(data: bytes, cut: int | None) -> bytes:
    packed = gzip.compress(data)
    return packed[: cut % max(len(packed), 1)] if cut is not None else packed


# ---- the property ---------------------------------------------------------------------------


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"an example took over {SECONDS} s")


def loads_or_fails_in_one_line(path, fmt, encoding, on_error, tokenizer) -> str:
    """'loaded' or 'refused' (a DataError of one line naming the file); anything else fails."""
    cfg = data_config(path, fmt, on_error=on_error, encoding=encoding)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    try:
        bundle = load_data(cfg, tokenizer)
    except DataError as e:
        message = str(e)
        assert "\n" not in message.strip(), message[:500]
        assert str(path) in message or f"data.path={str(path)!r}" in message, message[:500]
        if os.environ.get("FUZZ_WHY"):
            print("refused:", message[:160].replace(str(path), "<file>"))
        return "refused"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if on_error == "raise":
        assert bundle.skips.total == 0
    if fmt != "oasst":  # OASST rows are messages that group into fewer conversations
        assert bundle.rows_read == bundle.records_kept + bundle.skips.total + bundle.dropped.total, bundle.summary()
    assert sum(c["records_kept"] for c in bundle.per_source.values()) == bundle.records_kept
    return "loaded"


CASES = [  # (id, format, file type, the records it holds)
    ("hh_rlhf", "hh_rlhf", "jsonl", RECORDS["hh_rlhf"]),
    ("pairwise", "pairwise", "jsonl", RECORDS["pairwise"]),
    ("ranked", "ranked", "jsonl", RECORDS["ranked"]),
    ("demonstration", "demonstration", "jsonl", RECORDS["demonstration"]),
    ("messages", "messages", "jsonl", RECORDS["messages"]),
    ("prompt", "prompt", "jsonl", RECORDS["prompt"]),
    ("ifeval", "ifeval", "jsonl", RECORDS["ifeval"]),
    ("oasst", "oasst", "jsonl", RECORDS["oasst"]),
    ("oasst_trees", "oasst", "trees.jsonl", RECORDS["oasst_trees"]),
    ("json", "pairwise", "json", RECORDS["pairwise"]),
    ("csv", "pairwise", "csv", RECORDS["pairwise"]),
    ("parquet", "ranked", "parquet", RECORDS["ranked"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_file_loads_with_counts_that_add_up_or_fails_in_one_line(case, tmp_path_factory, tokenizer):
    name, fmt, kind, records = case
    outcomes = Counter()

    @FUZZ
    @given(made=file_bytes(records, kind.split(".")[-1]), gz=st.sampled_from([None, "whole", "cut"]),
           cut=st.integers(0, 10**6), on_error=st.sampled_from(["raise", "skip"]))
    def check(made, gz, cut, on_error):
        data, encoding = made
        folder = tmp_path_factory.mktemp(name)
        suffix = f".{kind}" + (".gz" if gz and kind != "parquet" else "")
        if suffix.endswith(".gz"):
            data = gzipped(data, cut if gz == "cut" else None)
        path = folder / f"data{suffix}"
        path.write_bytes(data)
        outcomes[loads_or_fails_in_one_line(path, fmt, encoding, on_error, tokenizer)] += 1

    check()
    # make fuzz shows these (-s): the counts docs/results.md quotes
    print(f"\nfuzz {name}: {sum(outcomes.values())} files, {outcomes['loaded']} loaded, "
          f"{outcomes['refused']} refused in one line, 0 tracebacks, 0 hangs")


def test_the_property_passes_the_shipped_examples_and_catches_a_broken_message(tokenizer, tmp_path, monkeypatch):
    for fmt, file in (("pairwise", "pairwise.jsonl"), ("ranked", "ranked.jsonl"), ("hh_rlhf", "hh_rlhf.jsonl"),
                      ("oasst", "oasst.trees.jsonl")):
        loads_or_fails_in_one_line(EXAMPLES / file, fmt, "utf-8", "raise", tokenizer)
    broken = tmp_path / "d.jsonl"
    broken.write_text('{"prompt": "p", "chosen": "a", "rejected": 5}\n')
    loads_or_fails_in_one_line(broken, "pairwise", "utf-8", "raise", tokenizer)  # a DataError naming it: passes

    def two_lines(*args, **kwargs):
        raise DataError("somewhere\nelse")

    monkeypatch.setitem(globals(), "load_data", two_lines)  # a message of two lines: the property must fail
    with pytest.raises(AssertionError):
        loads_or_fails_in_one_line(broken, "pairwise", "utf-8", "raise", tokenizer)
