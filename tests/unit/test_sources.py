"""Every adapter on good fixtures (data/examples) and on one malformed record per failure class."""

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import EXAMPLES, data_config, write_lines
from rlhf.config import Truncate
from rlhf.data import Comparison, DataError, Demonstration, load_data

GOOD_PAIR = {"prompt": "p1", "chosen": "good", "rejected": "bad"}


def records(bundle, kind):
    return getattr(bundle.splits["sft"], kind)


# ---- good input -------------------------------------------------------------------------


def test_demonstrations_example(tokenizer):
    b = load_data(data_config(EXAMPLES / "demonstration.jsonl", "demonstration"), tokenizer)
    demos = records(b, "demonstrations")
    assert [d.response for d in demos] == ["Red is a primary colour.", "2 + 3 = 5.", "Cold."]
    assert demos[2].prompt == ({"role": "system", "content": "Answer in one word."},
                               {"role": "user", "content": "Opposite of hot?"})
    assert (b.rows_read, b.records_kept, b.skips.total) == (3, 3, 0)


def test_messages_example(tokenizer):
    demos = records(load_data(data_config(EXAMPLES / "messages.jsonl", "messages"), tokenizer), "demonstrations")
    assert demos[1].response == "Madrid."
    assert [m["role"] for m in demos[1].prompt] == ["user", "assistant", "user"]


def test_pairwise_example_is_k2_comparison_with_margin(tokenizer):
    comps = records(load_data(data_config(EXAMPLES / "pairwise.jsonl", "pairwise"), tokenizer), "comparisons")
    assert comps[1] == Comparison("Suggest a name for a cat.", ("How about Miso?", "Cat."), (0, 1), 1.5, "test")
    assert comps[0].margin is None and list(comps[0].pairs()) == [(0, 1)]


def test_ranked_example_orders_by_rank_and_keeps_ties(tokenizer):
    comps = records(load_data(data_config(EXAMPLES / "ranked.jsonl", "ranked"), tokenizer), "comparisons")
    assert comps[0].responses == ("Joyful.", "Glad, I think.", "Sad.") and comps[0].ranks == (0, 1, 2)
    spider = comps[1]
    assert spider.responses == ("A spider has eight legs.", "Eight.", "Spiders have six legs.", "Many.")
    assert spider.ranks == (0, 0, 1, 2)
    # C(4,2) = 6 pairs, less the one tie between the two rank-0 answers
    assert list(spider.pairs()) == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_hh_rlhf_example_gives_multiturn_prompt_and_last_turns(tokenizer):
    b = load_data(data_config(EXAMPLES / "hh_rlhf.jsonl", "hh_rlhf"), tokenizer)
    c = records(b, "comparisons")[1]
    assert [m["role"] for m in c.prompt] == ["user", "assistant", "user"]
    assert c.prompt[-1]["content"] == "About five hours."
    assert c.responses == ("Most adults need seven to nine hours; more sleep may help, and a doctor can "
                           "check other causes.", "Drink more coffee.")


def test_oasst_trees_give_k_wise_comparisons_of_ranked_replies(tokenizer, caplog):
    import logging

    caplog.set_level(logging.INFO)
    b = load_data(data_config(EXAMPLES / "oasst.jsonl", "oasst"), tokenizer)
    comps = sorted(records(b, "comparisons"), key=lambda c: len(c.prompt))
    assert len(comps) == 2 and b.skips.total == 0  # p3 has one reply: nothing to compare
    first, follow_up = comps
    assert first.prompt == ({"role": "user", "content": "What is 2 + 2?"},)
    assert first.responses == ("2 + 2 = 4.", "Four.", "It is 5.") and first.ranks == (0, 1, 2)
    assert [m["content"] for m in follow_up.prompt] == ["What is 2 + 2?", "2 + 2 = 4.", "And 3 + 3?"]
    assert follow_up.responses == ("3 + 3 = 6.", "Seven.")
    assert "1 assistant replies without a rank" in caplog.text  # "Maybe four?" is counted, not lost silently


def test_oasst_partial_tree_names_the_missing_parent(tmp_path, tokenizer):
    rows = [json.loads(line) for line in (EXAMPLES / "oasst.jsonl").read_text().splitlines()]
    path = write_lines(tmp_path / "partial.jsonl", [r for r in rows if r["message_id"] != "a2"])
    with pytest.raises(DataError, match="field 'parent_id'.*'a2' is not in the source"):
        load_data(data_config(path, "oasst"), tokenizer)


def test_ultrafeedback_conversations_are_pairwise_comparisons(tokenizer):
    comps = records(load_data(data_config(EXAMPLES / "ultrafeedback.jsonl", "pairwise"), tokenizer), "comparisons")
    assert comps[1].prompt == ({"role": "user", "content": "Is 17 prime?"},)
    assert comps[1].responses == ("Yes: 17 has no divisors other than 1 and itself.", "No, 17 = 3 x 6.")


def test_tldr_prompt_completion_rows_map_with_a_field_name(tokenizer):
    from rlhf.config import FieldMap

    b = load_data(data_config(EXAMPLES / "tldr.jsonl", "demonstration", fields=FieldMap(response="completion")),
                  tokenizer)
    demos = records(b, "demonstrations")
    assert demos[0].prompt.endswith("TL;DR:") and demos[0].response.startswith(" Old yeast")
    assert len(b.splits["ppo"].prompts) == 2  # the same prompts serve PPO


def test_prompt_example(tokenizer):
    b = load_data(data_config(EXAMPLES / "prompts.jsonl", "prompt"), tokenizer)
    assert len(b.splits["ppo"].prompts) == 2 and not b.splits["ppo"].comparisons


def test_demonstrations_from_comparisons_takes_untied_best(tokenizer):
    cfg = data_config(EXAMPLES / "ranked.jsonl", "ranked", demonstrations_from_comparisons=True)
    demos = records(load_data(cfg, tokenizer), "demonstrations")
    assert [d.response for d in demos] == ["Joyful."]  # the spider ranking's best is a tie


def test_field_mapping_with_nested_names(tmp_path, tokenizer):
    path = write_lines(tmp_path / "qa.jsonl", [{"meta": {"question": "q?"}, "answer": "a."}])
    cfg = data_config(path, "demonstration")
    cfg.fields.prompt, cfg.fields.response = "meta.question", "answer"
    assert records(load_data(cfg, tokenizer), "demonstrations") == [Demonstration("q?", "a.", "test")]


def _pairs(tokenizer, path, fmt="pairwise", **kw):
    return records(load_data(data_config(path, fmt, **kw), tokenizer), "comparisons")


def test_csv_parquet_json_gz_and_folder_read_the_same_records(tmp_path, tokenizer):
    rows = [json.loads(line) for line in (EXAMPLES / "pairwise.jsonl").read_text().splitlines()]
    for r in rows:
        r.setdefault("margin", None)
    expected = _pairs(tokenizer, EXAMPLES / "pairwise.jsonl")

    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected", "margin"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps({"data": rows}))
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.write((EXAMPLES / "pairwise.jsonl").read_text())
    for name in ("p.csv", "p.parquet", "p.json", "p.jsonl.gz"):
        assert _pairs(tokenizer, tmp_path / name) == expected, name

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text((EXAMPLES / "pairwise.jsonl").read_text())
    (folder / "b.jsonl").write_text(json.dumps({"prompt": "extra", "chosen": "x", "rejected": "y"}) + "\n")
    assert len(_pairs(tokenizer, folder)) == 4


def test_hub_path_uses_load_dataset(tmp_path, tokenizer):
    # The hub code path (datasets.load_dataset(id, split=...)) on a local dataset folder.
    repo = tmp_path / "org_dataset" / "data"
    repo.mkdir(parents=True)
    (repo / "train.jsonl").write_text((EXAMPLES / "pairwise.jsonl").read_text())
    cfg = data_config(EXAMPLES / "pairwise.jsonl", "pairwise")
    cfg.path, cfg.hub_id, cfg.hub_split = None, str(tmp_path / "org_dataset"), "train"
    b = load_data(cfg, tokenizer)
    assert [c.responses for c in records(b, "comparisons")] == [c.responses for c in _pairs(tokenizer, EXAMPLES / "pairwise.jsonl")]
    write_lines(repo / "train.jsonl", [GOOD_PAIR, {"prompt": "p2", "chosen": "s", "rejected": 5}])
    with pytest.raises(DataError, match=rf"{cfg.hub_id}\[train\] row 1: field 'rejected'"):
        load_data(cfg, tokenizer)


def test_max_records_limits_rows(tokenizer):
    b = load_data(data_config(EXAMPLES / "pairwise.jsonl", "pairwise", max_records=2), tokenizer)
    assert b.rows_read == 2


# ---- bad input: one case per failure class -------------------------------------------------

LONG = " ".join(["word"] * 200)
BAD = [
    # (id, format, bad line, skip reason, text the error must contain)
    ("invalid_json", "pairwise", '{"prompt": "p2", "chosen": "a",', "invalid_json", "invalid JSON"),
    ("not_an_object", "pairwise", "[1, 2]", "wrong_type", "expected a JSON object"),
    ("missing_field", "pairwise", {"prompt": "p2", "chosen": "a"}, "missing_field", "field 'rejected': missing field"),
    ("null_field", "demonstration", {"prompt": "p2", "response": None}, "missing_field", "field 'response': is null"),
    ("wrong_type_prompt", "pairwise", {"prompt": 5, "chosen": "a", "rejected": "b"}, "wrong_type", "field 'prompt': expected a string or a list"),
    ("wrong_type_response", "demonstration", {"prompt": "p2", "response": ["a"]}, "wrong_type", "field 'response': expected a string"),
    ("wrong_type_margin", "pairwise", {"prompt": "p2", "chosen": "a", "rejected": "b", "margin": "big"}, "wrong_type", "field 'margin'"),
    ("empty_prompt", "pairwise", {"prompt": "  ", "chosen": "a", "rejected": "b"}, "empty_prompt", "empty prompt"),
    ("bad_role", "demonstration", {"prompt": [{"role": "bot", "content": "x"}], "response": "a"}, "bad_messages", "role must be one of"),
    ("prompt_ends_with_assistant", "demonstration", {"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "response": "a"}, "bad_messages", "last message must be the user"),
    ("k_below_2", "ranked", {"prompt": "p2", "responses": ["only one"]}, "too_few_responses", "K >= 2"),
    ("duplicate_in_ranking", "ranked", {"prompt": "p2", "responses": ["a", "b", "a"]}, "duplicate_responses", "responses 0 and 2 are identical"),
    ("all_tied", "ranked", {"prompt": "p2", "responses": [{"text": "a", "rank": 1}, {"text": "b", "rank": 1}]}, "all_tied", "same rank"),
    ("rank_not_number", "ranked", {"prompt": "p2", "responses": [{"text": "a", "rank": "first"}, {"text": "b", "rank": 1}]}, "wrong_type", "rank"),
    ("over_long_response", "pairwise", {"prompt": "p2", "chosen": LONG, "rejected": "b"}, "response_too_long", "field 'chosen': over-long after formatting"),
    ("over_long_prompt", "demonstration", {"prompt": LONG, "response": "a"}, "prompt_too_long", "data.max_prompt_tokens=256"),
    ("conversations_differ", "pairwise", {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                          "rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "c"}]},
     "transcripts_differ", "differ before their last assistant turn"),
    ("conversation_without_answer", "pairwise", {"prompt": "p", "chosen": [{"role": "user", "content": "a"}],
                                                 "rejected": [{"role": "user", "content": "a"}]},
     "bad_messages", "field 'chosen[0]': the conversation must end with an assistant turn"),
    ("hh_not_a_transcript", "hh_rlhf", {"chosen": "hello", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "bad_transcript", "field 'chosen'"),
    ("hh_transcripts_differ", "hh_rlhf", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: c"}, "transcripts_differ", "differ before"),
    ("hh_all_turns_empty", "hh_rlhf", {"chosen": "\n\nHuman: \n\nAssistant: b", "rejected": "\n\nHuman:  \n\nAssistant: c"}, "empty_prompt", "every message is empty"),
    ("messages_without_answer", "messages", {"messages": [{"role": "user", "content": "x"}]}, "bad_messages", "final assistant turn"),
]
GOOD = {
    "pairwise": GOOD_PAIR,
    "demonstration": {"prompt": "p1", "response": "r1"},
    "ranked": {"prompt": "p1", "responses": ["a", "b"]},
    "hh_rlhf": {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"},
    "messages": {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
}


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_record_raises_naming_file_line_field_and_fix(case, tmp_path, tokenizer):
    _, fmt, bad, _, text = case
    path = write_lines(tmp_path / "d.jsonl", [GOOD[fmt], bad, GOOD[fmt]])
    with pytest.raises(DataError) as err:  # truncate=none: an over-long record is a bad record, as once
        load_data(data_config(path, fmt, truncate=Truncate.none), tokenizer)
    message = str(err.value)
    assert f"{path} line 2:" in message
    assert text in message
    assert "data.on_error=skip" in message


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_record_is_skipped_and_counted(case, tmp_path, tokenizer):
    _, fmt, bad, reason, _ = case
    path = write_lines(tmp_path / "d.jsonl", [GOOD[fmt], bad, GOOD[fmt]])
    b = load_data(data_config(path, fmt, on_error="skip", truncate=Truncate.none), tokenizer)
    assert dict(b.skips.counts) == {reason: 1}
    assert b.skips.first_at[reason] == f"{path} line 2"
    assert (b.rows_read, b.records_kept) == (3, 2)
    assert b.summary()["skipped"] == {reason: 1}


def test_missing_file_and_unsupported_type(tmp_path, tokenizer):
    with pytest.raises(DataError, match="no such file"):
        load_data(data_config(tmp_path / "nope.jsonl", "pairwise"), tokenizer)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_data(data_config(tmp_path / "d.txt", "pairwise"), tokenizer)


def test_json_file_that_is_not_json_names_line(tmp_path, tokenizer):
    (tmp_path / "d.json").write_text('[{"prompt": "a"},\n{oops}]')
    with pytest.raises(DataError, match=r"d.json: invalid JSON at line 2"):
        load_data(data_config(tmp_path / "d.json", "prompt"), tokenizer)


def test_parquet_rows_are_named_in_errors(tmp_path, tokenizer):
    rows = [GOOD_PAIR, {"prompt": "  ", "chosen": "a", "rejected": "b"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet row 2: field 'prompt': empty prompt"):
        load_data(data_config(tmp_path / "d.parquet", "pairwise"), tokenizer)


def test_an_empty_split_loads_and_the_stage_that_needs_it_says_so(tmp_path, tokenizer):
    path = write_lines(tmp_path / "d.jsonl", [GOOD_PAIR])  # one prompt: three of four splits empty
    cfg = data_config(path, "pairwise")
    cfg.splits.shared, cfg.splits.sft, cfg.splits.rm, cfg.splits.ppo, cfg.splits.eval = [], 0.25, 0.25, 0.25, 0.25
    b = load_data(cfg, tokenizer)
    [(full, _)] = [(n, s) for n, s in b.splits.items() if s.prompts]
    empty = next(n for n in b.splits if n != full)
    with pytest.raises(DataError, match=rf"stage rm needs comparisons in split '{empty}', and {path} has none "
                                        rf"there .* raise data.splits.{empty}"):
        b.require(empty, "comparisons", "rm")
    assert len(b.require(full, "comparisons", "rm")) == 1


def test_require_names_the_stage_and_the_missing_kind(tokenizer):
    b = load_data(data_config(EXAMPLES / "pairwise.jsonl", "pairwise"), tokenizer)
    with pytest.raises(DataError, match="stage sft needs demonstrations in split 'sft'.*demonstrations_from_comparisons"):
        b.require("sft", "demonstrations", "sft")
    assert len(b.require("rm", "comparisons", "rm")) == 3
