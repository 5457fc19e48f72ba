"""Real data as users bring it: HH-RLHF quirks, long conversations, OpenAssistant release trees,
several sources in one run, and broken files (each a one-line error naming the file)."""

import codecs
import gzip
import json

import pytest

from tests.conftest import EXAMPLES, data_config, write_lines
from rlhf.config import OasstConfig, SourceConfig, Truncate
from rlhf.data import DataError, encode_prompts, load_data


def hh(*turns: str) -> str:
    """An HH-RLHF transcript from alternating Human/Assistant texts."""
    return "".join(f"\n\n{('Human', 'Assistant')[i % 2]}: {t}" for i, t in enumerate(turns))


# ---- HH-RLHF as published ------------------------------------------------------------------


def test_hh_empty_reply_is_a_valid_response_and_counted(tmp_path, tokenizer):
    path = write_lines(tmp_path / "hh.jsonl", [
        {"chosen": hh("hi", ""), "rejected": hh("hi", "go away")},
        {"chosen": hh("hello", "hello!"), "rejected": hh("hello", "")},
    ])
    b = load_data(data_config(path, "hh_rlhf"), tokenizer)
    assert [c.responses for c in b.every.comparisons] == [("", "go away"), ("hello!", "")]
    assert b.summary()["sources"]["test"]["empty_responses"] == 2 and b.skips.total == 0


def test_hh_reply_containing_an_assistant_marker_is_one_reply(tmp_path, tokenizer):
    # A few public records: the chosen reply itself holds "\n\nAssistant:", which parses as two
    # Assistant turns in a row; the labeller saw one reply.
    path = write_lines(tmp_path / "hh.jsonl", [
        {"chosen": hh("q1", "a1", "q2", "first part") + "\n\nAssistant: second part",
         "rejected": hh("q1", "a1", "q2", "other")},
        {"chosen": hh("q1", "a1", "q2", "x"), "rejected": hh("q1", "DIFFERENT", "q2", "y")},
    ])
    b = load_data(data_config(path, "hh_rlhf", on_error="skip"), tokenizer)
    (c,) = b.every.comparisons
    assert c.responses == ("first part\n\nAssistant: second part", "other")
    assert [m["content"] for m in c.prompt] == ["q1", "a1", "q2"]
    assert dict(b.skips.counts) == {"transcripts_differ": 1}  # an earlier turn differs: still bad


def test_every_record_shape_of_the_released_hh_files_loads_with_the_defaults(tmp_path, tokenizer):
    """The shapes found in Anthropic's released HH-RLHF files, each one record; the defaults
    (data.on_error=raise) load them all: empty turns kept and counted, identical pairs left out
    and counted."""
    shapes = {
        "one turn": {"chosen": hh("hi", "hello"), "rejected": hh("hi", "go")},
        "several turns": {"chosen": hh("q1", "a1", "q2", "yes"), "rejected": hh("q1", "a1", "q2", "no")},
        "empty earlier Assistant turn": {"chosen": hh("ideas?", "", "Do you have more ideas?", "Try this"),
                                         "rejected": hh("ideas?", "", "Do you have more ideas?", "No")},
        "empty earlier Human turn": {"chosen": hh("q", "a", "", "sure"), "rejected": hh("q", "a", "", "nope")},
        "whitespace-only turn": {"chosen": hh("x", " \t ", "y", "z1"), "rejected": hh("x", " \t ", "y", "z2")},
        "empty final reply": {"chosen": hh("hey", ""), "rejected": hh("hey", "what")},
        "chosen equals rejected": {"chosen": hh("same?", "same"), "rejected": hh("same?", "same")},
        "reply holding an Assistant marker": {"chosen": hh("m", "part one") + "\n\nAssistant: part two",
                                              "rejected": hh("m", "other")},
        "no leading blank line": {"chosen": hh("lead", "one").lstrip(), "rejected": hh("lead", "two").lstrip()},
        "non-ASCII": {"chosen": hh("¿Qué tal? 你好", "Très bien 🙂"), "rejected": hh("¿Qué tal? 你好", "mal")},
    }
    path = write_lines(tmp_path / "hh.jsonl", list(shapes.values()))
    b = load_data(data_config(path, "hh_rlhf"), tokenizer)
    summary = b.summary()
    assert (b.rows_read, b.records_kept, b.skips.total) == (10, 9, 0)
    assert summary["dropped"] == {"identical_answers": 1} and summary["dropped_first_at"]["identical_answers"] == f"{path} line 7"
    assert summary["empty_turns"] == 3 and summary["sources"]["test"]["empty_turns"] == 3
    kept = {c.responses: c for c in b.every.comparisons}
    assert [m["content"] for m in kept[("Try this", "No")].prompt] == ["ideas?", "", "Do you have more ideas?"]
    assert [m["content"] for m in kept[("sure", "nope")].prompt] == ["q", "a", ""]


def test_an_empty_earlier_turn_of_a_message_list_is_kept_and_counted(tmp_path, tokenizer):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}, {"role": "user", "content": "more?"}]
    for fmt, row in (("messages", {"messages": [*turns, {"role": "assistant", "content": "yes"}]}),
                     ("demonstration", {"prompt": turns, "response": "sure"})):
        b = load_data(data_config(write_lines(tmp_path / f"{fmt}.jsonl", [row]), fmt), tokenizer)
        assert [d.prompt[1]["content"] for d in b.every.demonstrations] == ["  "]
        assert b.summary()["empty_turns"] == 1
    nothing = write_lines(tmp_path / "e.jsonl", [{"messages": [{"role": "user", "content": " "},
                                                               {"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError, match=r"e.jsonl line 1: field 'messages': every message is empty"):
        load_data(data_config(nothing, "messages"), tokenizer)


def test_a_ranking_of_identical_answers_is_left_out_whatever_on_error_says(tmp_path, tokenizer):
    path = write_lines(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["a", "a", "a"]},
                                              {"prompt": "q", "responses": ["a", "b"]}])
    for on_error in ("raise", "skip"):
        b = load_data(data_config(path, "ranked", on_error=on_error), tokenizer)
        assert len(b.every.comparisons) == 1 and b.summary()["dropped"] == {"identical_answers": 1}


def test_empty_demonstration_is_left_out_and_counted_even_when_errors_raise(tmp_path, tokenizer):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "p1", "response": "r"}, {"prompt": "p2", "response": " "}])
    b = load_data(data_config(path, "demonstration"), tokenizer)
    assert len(b.every.demonstrations) == 1
    assert b.summary()["dropped"] == {"empty_demonstration": 1}
    assert b.dropped.first_at["empty_demonstration"] == f"{path} line 2"


# ---- truncation ---------------------------------------------------------------------------


def tokens(tokenizer, prompt) -> int:
    return len(encode_prompts(tokenizer, [prompt])[0])


def test_long_conversation_keeps_its_most_recent_turns_and_the_system_message(tmp_path, tokenizer):
    system = {"role": "system", "content": "Be brief."}
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " + "x" * 40} for i in range(9)]
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": [system, *turns], "response": "ok"}])
    full = tokens(tokenizer, (system, *turns))
    b = load_data(data_config(path, "demonstration", max_prompt_tokens=full - 60), tokenizer)
    (d,) = b.every.demonstrations
    assert d.prompt[0] == system and d.prompt[1]["role"] == "user"  # still opens with the user
    assert list(d.prompt[1:]) == turns[-len(d.prompt) + 1:]  # a suffix of whole turns
    assert len(d.prompt) == 1 + 7  # one exchange (2 turns) was enough
    assert tokens(tokenizer, d.prompt) <= full - 60
    assert b.summary()["truncated"] == {"prompt_turns_dropped": 1}


def test_one_over_long_turn_is_cut_from_the_left(tmp_path, tokenizer):
    long = "start " + "y" * 300 + " the question at the end?"
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": long, "response": "ok"}])
    b = load_data(data_config(path, "demonstration", max_prompt_tokens=64), tokenizer)
    (d,) = b.every.demonstrations
    assert isinstance(d.prompt, str) and long.endswith(d.prompt) and d.prompt.endswith("at the end?")
    assert 48 < tokens(tokenizer, d.prompt) <= 64
    assert b.summary()["truncated"] == {"prompt_turn_cut": 1}


def test_truncation_keeps_the_split_of_the_prompt_as_read(tmp_path, tokenizer):
    rows = [{"prompt": f"q{i} " + "z" * 200, "response": "ok"} for i in range(40)]
    path = write_lines(tmp_path / "d.jsonl", rows)
    cut = load_data(data_config(path, "demonstration", max_prompt_tokens=32, splits=_fractions()), tokenizer)
    whole = load_data(data_config(path, "demonstration", splits=_fractions()), tokenizer)
    for name in ("sft", "rm"):
        assert len(cut.splits[name].prompts) == len(whole.splits[name].prompts)


def _fractions():
    from rlhf.config import SplitConfig

    return SplitConfig(sft=0.5, rm=0.5, ppo=0.0, eval=0.0)


def test_over_long_reply_leaves_its_ranking_while_two_remain(tmp_path, tokenizer):
    long = "w " * 200
    ranked = load_data(data_config(write_lines(tmp_path / "r.jsonl", [
        {"prompt": "p1", "responses": ["best", long, "worst"]},  # K 3 -> 2
        {"prompt": "p2", "responses": [long, "b"]}]), "ranked"), tokenizer)
    (first,) = ranked.every.comparisons
    assert first.responses == ("best", "worst") and first.ranks == (0, 1)
    assert ranked.summary()["truncated"] == {"response_dropped_from_ranking": 1}
    assert ranked.summary()["dropped"] == {"response_too_long": 1}  # one reply left: nothing to compare
    demos = load_data(data_config(write_lines(tmp_path / "d.jsonl", [{"prompt": "p", "response": long},
                                                                     {"prompt": "q", "response": "fine"}]),
                                  "demonstration"), tokenizer)
    assert len(demos.every.demonstrations) == 1 and demos.summary()["dropped"] == {"response_too_long": 1}


def test_truncate_none_keeps_the_old_drop_everything_rule(tmp_path, tokenizer):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "p1", "responses": ["best", "w " * 200, "worst"]},
                                             {"prompt": "p2", "responses": ["a", "b"]}])
    b = load_data(data_config(path, "ranked", on_error="skip", truncate=Truncate.none), tokenizer)
    assert len(b.every.comparisons) == 1 and dict(b.skips.counts) == {"response_too_long": 1}


# ---- OpenAssistant release trees --------------------------------------------------------------

TREES = EXAMPLES / "oasst.trees.jsonl"


def test_oasst_release_trees_give_the_ranked_replies_of_every_level(tokenizer):
    b = load_data(data_config(TREES, "oasst"), tokenizer)
    first, second = sorted(b.every.comparisons, key=lambda c: len(c.prompt))
    assert [m["content"] for m in first.prompt] == ["Name a colour."]
    assert first.responses == ("Blue.", "The sky.", "Blau.") and first.ranks == (0, 1, 2)
    # three levels down: the conversation so far is the prompt; the unranked reply (Pink) and the
    # deleted one are left out
    assert [m["content"] for m in second.prompt] == ["Name a colour.", "Blue.", "Another one?"]
    assert second.responses == ("Green, like grass.", "Red.")
    # the second tree's reply that failed review is left out, so "2 + 2" has one reply: no comparison
    assert b.summary()["dropped"] == {"oasst_deleted": 1, "oasst_review_result": 1}
    assert b.rows_read == 2  # lines of the file
    assert b.dropped.first_at["oasst_deleted"] == f"{TREES} line 1, message 0.0.0.3"


def test_oasst_filters_are_options(tokenizer):
    only_en = load_data(data_config(TREES, "oasst", oasst=OasstConfig(languages=["en"])), tokenizer)
    assert sorted(c.k for c in only_en.every.comparisons) == [2, 2]  # "Blau." (de) left out
    everything = load_data(data_config(TREES, "oasst", oasst=OasstConfig(drop_deleted=False, require_review=False)),
                           tokenizer)
    assert sorted(c.k for c in everything.every.comparisons) == [2, 3, 3]


def test_oasst_flat_and_tree_layouts_agree(tmp_path, tokenizer):
    flat = []
    for line in TREES.read_text().splitlines():
        stack = [json.loads(line)["prompt"]]
        while stack:
            m = stack.pop()
            stack += m.pop("replies")
            flat.append(m)
    path = write_lines(tmp_path / "flat.jsonl", flat)
    key = lambda c: (len(c.prompt), c.responses)  # noqa: E731
    assert sorted(load_data(data_config(path, "oasst"), tokenizer).every.comparisons, key=key) == \
        sorted(load_data(data_config(TREES, "oasst"), tokenizer).every.comparisons, key=key)


# ---- several sources --------------------------------------------------------------------------


def test_several_sources_are_read_counted_and_labelled_each(tmp_path, tokenizer):
    extra = write_lines(tmp_path / "mine.jsonl", [{"prompt": f"mine {i}", "responses": ["a", "b", "c"]} for i in range(3)])
    cfg = data_config(EXAMPLES / "pairwise.jsonl", "pairwise",
                      sources=[SourceConfig(name="mine", format=_fmt("ranked"), path=str(extra), weight=2.0)])
    b = load_data(cfg, tokenizer)
    by_source = {}
    for c in b.every.comparisons:
        by_source[c.source] = by_source.get(c.source, 0) + 1
    assert by_source == {"test": 3, "mine": 6}  # weight 2: each record twice
    s = b.summary()["sources"]
    assert (s["test"]["rows_read"], s["mine"]["rows_read"], s["mine"]["records_kept"]) == (3, 3, 6)
    assert " + " in b.source and str(extra) in b.source


def test_weight_below_one_keeps_a_fixed_share_by_prompt(tmp_path, tokenizer):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(200)])
    half = [c.prompt for c in load_data(data_config(path, "pairwise", weight=0.5), tokenizer).every.comparisons]
    again = [c.prompt for c in load_data(data_config(path, "pairwise", weight=0.5), tokenizer).every.comparisons]
    assert half == again and 70 < len(half) < 130


def _fmt(name):
    from rlhf.config import DataFormat

    return DataFormat[name]


def test_turns_list_field_reads_the_first_turn(tmp_path, tokenizer):
    path = write_lines(tmp_path / "question.jsonl", [
        {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now a limerick."]}])
    b = load_data(data_config(path, "prompt", fields=_fields(prompt="turns.0")), tokenizer)
    assert [p.prompt for p in b.every.prompts] == ["Write a haiku."]


def _fields(**kw):
    from rlhf.config import FieldMap

    return FieldMap(**kw)


# ---- broken files: one error naming the file, and where ----------------------------------------

GOOD = json.dumps({"prompt": "p1", "chosen": "good", "rejected": "bad"})


def broken_files(tmp_path):
    """(name, path, text the error must hold): every kind of file a user may hand over broken."""
    cases = []
    bad_utf8 = tmp_path / "latin1.json"
    bad_utf8.write_bytes(b'[{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}]')
    cases.append(("invalid_utf8_json", bad_utf8, "not valid utf-8 at byte offset 16 (byte 0xe9)"))
    not_gzip = tmp_path / "d.jsonl.gz"
    not_gzip.write_text(GOOD + "\n")
    cases.append(("not_gzip", not_gzip, "Not a gzipped file"))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress((GOOD + "\n").encode() * 50)[:60])
    cases.append(("truncated_gzip", cut, "cannot be read"))
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('prompt,chosen,rejected\np1,"unterminated,b\n')
    cases.append(("csv_unterminated_quote", csv_file, "not a readable csv file"))
    parquet = tmp_path / "d.parquet"
    parquet.write_text("this is not parquet")
    cases.append(("not_parquet", parquet, "not a readable parquet file"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases.append(("empty_file", empty, "no records (an empty file)"))
    folder = tmp_path / "shards"
    (folder / "part.jsonl").mkdir(parents=True)
    cases.append(("folder_named_like_a_file", folder, "a folder, not a file"))
    return cases


@pytest.mark.parametrize("case", range(7))
def test_broken_file_is_one_error_naming_it(case, tmp_path, tokenizer):
    name, path, text = broken_files(tmp_path)[case]
    with pytest.raises(DataError) as err:
        load_data(data_config(path, "pairwise", on_error="skip"), tokenizer)  # skip cannot hide a broken file
    message = str(err.value)
    assert text in message, (name, message)
    assert str(path) in message and "\n" not in message


def test_invalid_utf8_line_names_line_and_offset_and_the_option(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n' + GOOD.encode() + b"\n")
    with pytest.raises(DataError) as err:
        load_data(data_config(path, "pairwise"), tokenizer)
    offset = len(GOOD) + 1 + len('{"prompt": "caf')
    assert f"{path} line 2" in str(err.value) and f"byte offset {offset}" in str(err.value)
    assert "data.encoding=" in str(err.value)
    b = load_data(data_config(path, "pairwise", on_error="skip"), tokenizer)
    assert dict(b.skips.counts) == {"invalid_encoding": 1}
    latin = load_data(data_config(path, "pairwise", encoding="latin-1"), tokenizer)
    assert "café" in [c.prompt for c in latin.every.comparisons]


def test_byte_order_mark_is_accepted(tmp_path, tokenizer):
    bom = codecs.BOM_UTF8
    (tmp_path / "d.jsonl").write_bytes(bom + (GOOD + "\n").encode())
    (tmp_path / "d.json").write_bytes(bom + f"[{GOOD}]".encode())
    (tmp_path / "d.csv").write_bytes(bom + b"prompt,chosen,rejected\np1,good,bad\n")
    for name in ("d.jsonl", "d.json", "d.csv"):
        (c,) = load_data(data_config(tmp_path / name, "pairwise"), tokenizer).every.comparisons
        assert (c.prompt, c.responses) == ("p1", ("good", "bad")), name


def test_utf16_file_reads_with_its_encoding(tmp_path, tokenizer):
    (tmp_path / "d.jsonl").write_bytes((GOOD + "\n").encode("utf-16"))
    (c,) = load_data(data_config(tmp_path / "d.jsonl", "pairwise", encoding="utf-16"), tokenizer).every.comparisons
    assert c.prompt == "p1"


def test_unreachable_hub_dataset_says_how_to_get_it(tokenizer):
    cfg = data_config(EXAMPLES / "pairwise.jsonl", "pairwise")
    cfg.path, cfg.hub_id = None, "no-such-org/no-such-dataset"
    with pytest.raises(DataError) as err:
        load_data(cfg, tokenizer)
    assert "data.hub_id='no-such-org/no-such-dataset'" in str(err.value) and "data.path" in str(err.value)
