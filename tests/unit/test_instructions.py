"""Verifiable instructions (rlhf/data/instructions.py) and the ifeval data format: each check
against a hand-written answer that follows it and one that does not, strict against loose, the
format's records and its bad ones, the gold scorer it gives compare and evaluate."""

import json
from pathlib import Path

import pytest

from rlhf.data import DataError, load_data
from rlhf.data import instructions as ins
from tests.conftest import EXAMPLES, data_config, write_lines

pytest.importorskip("if_verifiable", reason="pip install -e '.[ifeval]'")

# id, its arguments, an answer that follows it, one that does not (IFEval's own semantics)
CASES = [
    ("keywords:existence", {"keywords": ["apple", "river"]}, "An apple fell into the river.", "A pear fell."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "A cat saw a cat.",
     "One cat only."),
    ("keywords:forbidden_words", {"forbidden_words": ["awful"]}, "The day was fine.", "The day was awful."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Jazz is fun.",
     "Zero is one."),
    ("language:response_language", {"language": "en"},
     "This is an ordinary English sentence about the weather in the city today.",
     "Ceci est une phrase ordinaire en français sur le temps qu'il fait aujourd'hui dans la ville."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", "Just one part."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Three words here.",
     "These are far more than five words."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First we wait.\n\nThen we go.", "First we wait.\n\nAfter that we go."),
    ("detectable_content:number_placeholders", {"num_placeholders": 1}, "Dear [name], hello.", "Dear friend, hello."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello there.\nP.S. See you.", "Hello there."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Perhaps."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "This is *important* news.",
     "This is plain news."),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nThe start.\nSection 2\nThe end.", "Section 1\nThe start."),
    ("detectable_format:json_format", {}, '{"answer": 42}', "answer: 42"),
    ("detectable_format:title", {}, "<<Rain>>\nIt rains.", "Rain\nIt rains."),
    ("combination:two_responses", {}, "It is blue.\n******\nIt is grey.", "It is blue."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hello."}, "Say hello. Hello!", "Hello!"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "All done. Any other questions?", "All done."),
    ("change_case:english_capital", {}, "THIS WHOLE ANSWER IS WRITTEN IN ENGLISH CAPITAL LETTERS TODAY.",
     "This answer is written in ordinary English letters today."),
    ("change_case:english_lowercase", {}, "this whole answer is written in english lowercase letters today.",
     "This answer is written in ordinary English letters today."),
    ("punctuation:no_comma", {}, "No commas here at all.", "Yes, a comma."),
    ("startend:quotation", {}, '"All of it quoted."', "Not quoted."),
]


def constraints(iid, kwargs):
    return ins.check_constraints([iid], [kwargs])


def test_every_ifeval_kind_is_checked_here_or_left_out_with_its_reason():
    assert {c[0] for c in CASES} | set(ins.unavailable()) == set(ins.registry())
    for iid, why in ins.unavailable().items():  # nltk's punkt is a download: those checks cannot run here
        assert iid in ins.NEEDS_PUNKT and "nltk data" in why


@pytest.mark.parametrize("iid,kwargs,follows,breaks", CASES, ids=[c[0] for c in CASES])
def test_each_check_passes_an_answer_that_follows_it_and_fails_one_that_does_not(iid, kwargs, follows, breaks):
    c = constraints(iid, kwargs)
    prompt = "Say hello." if iid == "combination:repeat_prompt" else "Answer the question."
    assert ins.verify(prompt, follows, c) == ins.Verdict((iid,), (True,), (True,))
    assert ins.verify(prompt, breaks, c).strict == (False,)


def test_loose_also_reads_the_answer_without_its_first_line_and_an_empty_answer_follows_nothing():
    c = ins.check_constraints(["punctuation:no_comma", "startend:end_checker"], [{}, {"end_phrase": "Bye."}])
    verdict = ins.verify("p", "Sure, here it is:\nNo commas in this part. Bye.", c)
    assert (verdict.strict, verdict.loose) == ((False, True), (True, True))
    assert (verdict.prompt_strict, verdict.prompt_loose) == (0.0, 1.0)
    assert ins.verify("p", "", c) == ins.Verdict(c.ids, (False, False), (False, False))


@pytest.mark.parametrize("ids,kwargs,field,says", [
    (["punctuation:no_comas"], [{}], "instruction_id_list[0]", "unknown instruction id 'punctuation:no_comas'"),
    (["punctuation:no_comma"], [{"letter": "a"}], "kwargs[0]", "'punctuation:no_comma' takes no letter"),
    (["keywords:frequency"], [{"keyword": "x", "relation": "at least"}], "kwargs[0]",
     "needs frequency (left out, the check would draw one at random)"),
    (["keywords:frequency"], [{"keyword": "x", "frequency": 2, "relation": "roughly"}], "kwargs[0]", "refused its arguments"),
    (["punctuation:no_comma", "detectable_format:title"], [{}], "kwargs", "a list of 2 objects"),
    ([], [], "instruction_id_list", "non-empty list"),
])
def test_bad_instructions_name_the_field_and_the_id(ids, kwargs, field, says):
    with pytest.raises(ins.RecordError) as e:
        ins.check_constraints(ids, kwargs)
    assert e.value.field == field and says in str(e.value)


def test_a_check_that_cannot_run_here_is_refused_not_passed(monkeypatch):
    monkeypatch.setattr(ins, "unavailable", lambda: {"punctuation:no_comma": "its check needs nltk data"})
    with pytest.raises(ins.RecordError, match="'punctuation:no_comma': its check needs nltk data") as e:
        constraints("punctuation:no_comma", {})
    assert e.value.kind == "instruction_unavailable"


def test_the_ifeval_file_loads_as_prompts_with_their_instructions_and_a_gold_scorer(tokenizer):
    rows = [json.loads(line) for line in (EXAMPLES / "ifeval.jsonl").read_text().splitlines()]
    bundle = load_data(data_config(EXAMPLES / "ifeval.jsonl", "ifeval"), tokenizer)
    prompts = bundle.splits["eval"].prompts
    assert [p.prompt for p in prompts] == [r["prompt"] for r in rows]
    assert [(list(p.constraints.ids), p.constraints.arguments()) for p in prompts] == \
        [(r["instruction_id_list"], r["kwargs"]) for r in rows]
    gold = bundle.gold_scorer
    assert gold(rows[0]["prompt"], "Rain falls. It is wet.") == 1.0
    assert gold(rows[0]["prompt"], "Rain falls, it is wet.") == 0.0
    fruits = "* apples are sweet and red\n* pears are green and soft\n* plums are small and purple"
    assert gold(rows[1]["prompt"], fruits) == 1.0
    assert gold(rows[1]["prompt"], fruits.replace("apples", "Apples")) == 0.0  # 3 bullets, not all lowercase
    assert gold(rows[1]["prompt"], fruits + "\n* figs are dry and brown") == 0.0  # lowercase, 4 bullets
    with pytest.raises(KeyError, match="not in this data"):
        gold("another prompt", "x")


def test_a_bad_record_stops_the_load_naming_file_line_and_id_or_is_counted_under_skip(tmp_path, tokenizer):
    good = {"key": 1, "prompt": "Answer without commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bad = {**good, "key": 2, "prompt": "Another.", "instruction_id_list": ["punctuation:no_commas"]}
    path = write_lines(tmp_path / "if.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"if\.jsonl line 2: field 'instruction_id_list\[0\]': unknown instruction id "
                                        r"'punctuation:no_commas'"):
        load_data(data_config(path, "ifeval"), tokenizer)
    bundle = load_data(data_config(path, "ifeval", on_error="skip"), tokenizer)
    assert bundle.skips.counts == {"unknown_instruction": 1} and bundle.records_kept == 1


def test_one_prompt_with_two_sets_of_instructions_is_refused(tmp_path, tokenizer):
    one = {"prompt": "Answer.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    two = {"prompt": "Answer.", "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]}
    with pytest.raises(DataError, match="line 2: the same prompt as an earlier record with other instructions"):
        load_data(data_config(write_lines(tmp_path / "if.jsonl", [one, two]), "ifeval"), tokenizer)


def test_prepare_counts_each_kind_of_instruction_per_split(tmp_path):
    from omegaconf import OmegaConf

    from rlhf.core.artifacts import StageRun
    from rlhf.stages import prepare
    from tests.unit.test_config import load

    cfg = load(["stage=prepare", "data=ifeval", f"data.path={EXAMPLES / 'ifeval.jsonl'}", f"runs_dir={tmp_path}",
                "logger=none", "data.splits.sft=0", "data.splits.rm=0", "data.splits.ppo=0", "data.splits.eval=1.0"])
    with StageRun(cfg.stage_dir, OmegaConf.structured(cfg)) as stage_run:
        prepare.run(cfg, stage_run)
    counted = json.loads((cfg.stage_dir / "manifest.json").read_text())["data"]["instructions"]
    asked = [i for line in (EXAMPLES / "ifeval.jsonl").read_text().splitlines() for i in json.loads(line)["instruction_id_list"]]
    assert counted["all"] == counted["eval"] == {i: asked.count(i) for i in asked}


BASES = [f"Describe item number {i} of a list." for i in range(40)]


def test_compose_is_deterministic_by_seed_and_leaves_the_global_random_state_alone():
    import random

    random.seed(123)
    before = random.getstate()
    rows = ins.compose(BASES, per_prompt=2, seed=7)
    assert random.getstate() == before
    assert rows == ins.compose(BASES, per_prompt=2, seed=7)
    assert rows != ins.compose(BASES, per_prompt=2, seed=8)
    assert [r["key"] for r in rows] == list(range(40))
    for base, row in zip(BASES, rows):
        assert row["prompt"].startswith(base + " ")
        # every row is a valid record of the format, with the arguments its check took
        assert ins.check_constraints(row["instruction_id_list"], row["kwargs"]).arguments() == row["kwargs"]


def test_compose_draws_no_conflicting_pair_and_never_a_held_out_kind():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    held_out = ["punctuation:no_comma", "detectable_format:title"]
    kinds = [k for k in ins.runnable_kinds() if k not in held_out]
    rows = ins.compose(BASES, kinds=kinds, per_prompt=3, seed=0)
    drawn = [i for r in rows for i in r["instruction_id_list"]]
    assert not set(drawn) & set(held_out)
    assert len(set(drawn)) > 10  # the draws spread over the kinds
    for r in rows:
        ids = r["instruction_id_list"]
        def clash(a, b):
            return b in INSTRUCTION_CONFLICTS[a] or a in INSTRUCTION_CONFLICTS[b]

        assert len(ids) == len(set(ids)) and not any(clash(a, b) for a in ids for b in ids if a != b)
        # fewer than asked only when no kind left goes with the ones drawn
        assert len(ids) == 3 or all(any(clash(k, a) for a in ids) for k in kinds if k not in ids)
    with pytest.raises(ValueError, match="unknown or not runnable"):
        ins.compose(BASES, kinds=["punctuation:no_comas"])


def test_the_compose_command_writes_a_file_the_ifeval_format_loads(tmp_path, tokenizer):
    prompts = write_lines(tmp_path / "seed.jsonl", [{"meta": {"q": b}} for b in BASES[:5]])
    out = tmp_path / "if.jsonl"
    assert ins.main([str(prompts), str(out), "--field", "meta.q", "--kinds", "punctuation:no_comma",
                     "detectable_format:title", "--seed", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == ins.compose(BASES[:5], kinds=["punctuation:no_comma", "detectable_format:title"], seed=3)
    bundle = load_data(data_config(out, "ifeval"), tokenizer)
    assert bundle.records_kept == 5 and bundle.gold_scorer(rows[0]["prompt"], "<<T>>\nNo commas here.") == 1.0


def test_an_over_long_prompt_with_instructions_is_left_out_not_shortened(tmp_path, tokenizer):
    row = {"prompt": "Answer this. " * 60 + "Use no commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    short = {"prompt": "Answer briefly.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bundle = load_data(data_config(write_lines(tmp_path / "if.jsonl", [row, short]), "ifeval", max_prompt_tokens=64),
                       tokenizer)
    assert bundle.records_kept == 1 and bundle.dropped.counts == {"prompt_too_long": 1}


def test_prompts_without_instructions_beside_ones_with_them_are_refused(tokenizer):
    from rlhf.config import DataFormat, SourceConfig

    cfg = data_config(EXAMPLES / "ifeval.jsonl", "ifeval",
                      sources=[SourceConfig(name="plain", format=DataFormat.prompt, path=str(EXAMPLES / "prompts.jsonl"))])
    with pytest.raises(DataError, match=r"prompts\.jsonl line 1: a prompt without verifiable instructions beside 4 "):
        load_data(cfg, tokenizer)


def test_the_verifier_reward_scores_all_or_nothing_or_the_share_followed_strict_or_loose(tokenizer):
    from rlhf.sampling.reward import VerifierReward

    bundle = load_data(data_config(EXAMPLES / "ifeval.jsonl", "ifeval"), tokenizer)
    fruits = bundle.splits["eval"].prompts[1].prompt  # 3 bullet points, all lowercase
    three = "* apples are sweet and red\n* pears are green and soft\n* plums are small and purple"
    answers = [three,  # both followed
               three.replace("pears", "Pears"),  # 3 bullets, not lowercase in any reading
               "here they are:\n" + three.rsplit("\n", 1)[0],  # lowercase, 2 bullets in any reading
               "Here they are:\n" + three]  # strictly not lowercase; loosely (without its first line) both
    expected = {("strict", "all"): [1, 0, 0, 0], ("strict", "fraction"): [1, 0.5, 0.5, 0.5],
                ("loose", "all"): [1, 0, 0, 1], ("loose", "fraction"): [1, 0.5, 0.5, 1]}
    for (check, credit), scores in expected.items():
        reward = VerifierReward(bundle.gold_scorer, check, credit)
        assert reward.score_texts([fruits] * 4, answers).tolist() == scores, (check, credit)
    assert reward.describe() == {"source": "verifier", "verifier": "loose, fraction"}


def test_the_verifier_reward_needs_prompts_with_instructions():
    from rlhf.config import ConfigError
    from rlhf.data.toy import gold_score
    from rlhf.sampling.reward import VerifierReward

    with pytest.raises(ConfigError, match="data=ifeval"):
        VerifierReward(gold_score)
    with pytest.raises(ConfigError, match="data=ifeval"):
        VerifierReward(None)


def test_instruction_accuracies_pool_answers_as_ifeval_defines_them():
    from rlhf.stages.compare.stats import instruction_accuracy

    def row(i, sample, ids, strict, loose):
        return {"policy": "p", "mode": "sampled", "prompt_index": i, "sample": sample,
                "instructions": {"ids": ids, "strict": strict, "loose": loose}}

    two = ["punctuation:no_comma", "change_case:english_lowercase"]
    rows = [row(0, 0, two, [True, True], [True, True]), row(0, 1, two, [True, False], [True, True]),
            row(1, 0, ["punctuation:no_comma"], [False], [True]), row(1, 1, ["punctuation:no_comma"], [False], [False])]
    got = instruction_accuracy(rows, 2, dict(resamples=200, confidence=0.9, seed=0))
    # prompt-level: per prompt the share of its answers following all, then the mean over prompts
    assert got["prompt_strict"]["mean"] == pytest.approx((1 / 2 + 0) / 2)
    assert got["prompt_loose"]["mean"] == pytest.approx((1 + 1 / 2) / 2)
    # instruction-level: pooled over every instruction of every answer (6 of them)
    assert got["instruction_strict"]["mean"] == pytest.approx(3 / 6)
    assert got["instruction_loose"]["mean"] == pytest.approx(5 / 6)
    assert got["by_kind"] == {"change_case:english_lowercase": {"instructions": 2, "strict": 0.5, "loose": 1.0},
                              "punctuation:no_comma": {"instructions": 4, "strict": 0.5, "loose": 0.75}}
    # resampling 2 prompts: each interval lies between the prompts' own values (all resamples are
    # made of them) and holds the mean
    for key, (lo, hi) in {"prompt_strict": (0, 0.5), "instruction_strict": (0, 3 / 4)}.items():
        assert lo <= got[key]["low"] <= got[key]["mean"] <= got[key]["high"] <= hi


def test_draws_give_each_prompt_rows_with_kinds_its_earlier_rows_did_not_use():
    kinds = ["punctuation:no_comma", "detectable_format:title", "change_case:english_lowercase",
             "startend:quotation", "keywords:letter_frequency"]
    rows = ins.compose(BASES[:6], kinds=kinds, draws=4, seed=2)
    assert [r["key"] for r in rows] == list(range(24))
    for n, base in enumerate(BASES[:6]):
        mine = rows[4 * n: 4 * n + 4]
        assert all(r["prompt"].startswith(base + " ") for r in mine)
        drawn = [r["instruction_id_list"][0] for r in mine]
        assert len(set(drawn)) == 4  # 5 kinds, 4 draws: no kind twice
    # one draw per prompt is the draw as before the option existed
    assert ins.compose(BASES, draws=1, seed=7) == ins.compose(BASES, seed=7)
    # a prompt that ends in a block of input gets its instructions in a paragraph of their own
    row, = ins.compose(["List these:\n\n- a\n- b"], kinds=["punctuation:no_comma"])
    assert row["prompt"].startswith("List these:\n\n- a\n- b\n\nIn your entire response")


def test_parts_hold_out_whole_base_prompts_whatever_instructions_follow(tmp_path):
    many = [f"Tell me about city number {i}." for i in range(400)]
    parts = [ins.part_of(p, 0.35) for p in many]
    assert 0.28 < parts.count("eval") / 400 < 0.42 and set(parts) == {"train", "eval"}
    # a hash of the prompt: the same answer for the same text anywhere, trailing spaces aside
    assert [ins.part_of(p + "  ", 0.35) for p in many] == parts
    assert [ins.part_of(p, 0.0) for p in many] == ["train"] * 400
    source = write_lines(tmp_path / "bases.jsonl", [{"prompt": p} for p in many[:60]])
    written = {}
    for part in ("train", "eval"):
        out = tmp_path / f"{part}.jsonl"
        assert ins.main([str(source), str(out), "--part", part, "--draws", "2", "--kinds", "punctuation:no_comma",
                         "detectable_format:title"]) == 0
        written[part] = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    bases = {part: {p for p in many[:60] if any(row.startswith(p + " ") for row in rows)}
             for part, rows in written.items()}
    assert not bases["train"] & bases["eval"] and bases["train"] | bases["eval"] == set(many[:60])
    assert bases["eval"] == {p for p in many[:60] if ins.part_of(p, 0.35) == "eval"}
    assert len(written["eval"]) == 2 * len(bases["eval"])


def test_the_scores_per_source_and_their_paired_differences_are_the_means_of_each_sources_prompts():
    from rlhf.stages.compare.stats import by_source

    def rows(policy, golds):
        return [{"policy": policy, "mode": "greedy", "prompt_index": i, "sample": 0, "gold_score": g,
                 "rm_score": None} for i, g in enumerate(golds)]

    sources = ["seen", "seen", "held_out", "seen", "held_out"]
    base, mine = rows("base", [0, 1, 0, 0, 1]), rows("grpo", [1, 1, 1, 0, 0])
    got = by_source(mine, base, sources, dict(resamples=200, confidence=0.9, seed=0))
    assert list(got) == ["seen", "held_out"]
    assert got["seen"]["prompts"] == 3 and got["held_out"]["prompts"] == 2
    assert got["seen"]["gold_score"]["mean"] == pytest.approx(2 / 3)
    assert got["held_out"]["gold_score"]["mean"] == pytest.approx(1 / 2)
    assert got["seen"]["gold_score_minus_baseline"]["mean"] == pytest.approx((1 + 0 + 0) / 3)
    assert got["held_out"]["gold_score_minus_baseline"]["mean"] == pytest.approx((1 - 1) / 2)
    assert got["seen"]["rm_score"] is None and got["seen"]["rm_score_minus_baseline"] is None
    assert by_source(base, None, sources, dict(resamples=50, confidence=0.9, seed=0))["seen"][
        "gold_score_minus_baseline"] is None


def test_the_committed_ifeval_files_are_what_make_ifeval_data_composes(tmp_path):
    """data/ifeval/ as the Makefile's ifeval-data target writes it: deterministic, so the files
    experiment=smollm2_ifeval reads are the generator's and share no base prompt."""
    import re

    from tests.conftest import ROOT

    make = (ROOT / "Makefile").read_text()
    held_out = re.search(r"^IFEVAL_HELD_OUT = (.+)$", make, re.M).group(1).split()
    commands = re.findall(r"^\t\$\(IFEVAL_COMPOSE\) (\S+) (.+)$", make, re.M)
    assert [Path(out).name for out, _ in commands] == ["self_instruct_train.jsonl", "self_instruct_test_seen.jsonl",
                                                       "self_instruct_test_held_out.jsonl"]
    bases = {}
    for out, flags in commands:
        args = flags.replace("$(IFEVAL_HELD_OUT)", " ".join(held_out)).split()
        assert ins.main([str(ROOT / "data" / "prompts" / "self_instruct_seed.jsonl"), str(tmp_path / "x.jsonl"), *args]) == 0
        assert (tmp_path / "x.jsonl").read_text() == (ROOT / out).read_text(), out
        rows = [json.loads(line) for line in (ROOT / out).read_text().splitlines()]
        bases[Path(out).stem] = {r["prompt"][:40] for r in rows}
        kinds = {k for r in rows for k in r["instruction_id_list"]}
        assert (kinds <= set(held_out)) if "held_out" in out else not kinds & set(held_out)
    assert not bases["self_instruct_train"] & (bases["self_instruct_test_seen"] | bases["self_instruct_test_held_out"])
