"""The feedback loop: rounds' folders and inputs, the simulated labeller, the collected file's
format, and the reward model's refusal of an unranked file."""

import json
import random
from collections import Counter

import pytest

from rlhf import lineage, stages
from rlhf.config import ConfigError, DataConfig, DataFormat, FieldMap, LoopConfig, RLHFConfig, StageConfig, ToyConfig
from rlhf.checks import check
from rlhf.data import DataError, load_data, toy
from rlhf.data.records import RecordError
from rlhf.data.sources import ranked


def finished(folder, output="final"):
    path = folder / output
    if output == "final":
        path.mkdir(parents=True)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    return path


def config(tmp_path, stage, round=1, **kw):
    return RLHFConfig(runs_dir=str(tmp_path), run="r", stage=StageConfig(stage), loop=LoopConfig(round=round), **kw)


# ---- rounds: folders, inputs, the pipeline's stages -------------------------------------------


def test_a_later_round_writes_its_own_folder_and_reads_round_ones_sft(tmp_path):
    run = tmp_path / "r"
    sft, ppo1 = finished(run / "sft"), finished(run / "ppo")
    finished(run / "rm")
    cfg = config(tmp_path, "collect", round=2)
    assert cfg.stage_dir == run / "round_2" / "collect"
    assert stages.resolve_inputs(cfg, "collect")["policy"] == str(ppo1)  # the previous round's policy
    rm2 = config(tmp_path, "rm", round=2)
    assert stages.resolve_inputs(rm2, "rm")["init_from"] == str(sft)  # sft: round 1's, no round-2 one
    # stage 3 of round 2 reads round 2's reward model, never round 1's by accident
    with pytest.raises(ConfigError, match=r"round_2/rm/final, which does not exist: run `rlhf stage=rm run=r "
                                          r"loop.round=2`"):
        stages.resolve_inputs(config(tmp_path, "ppo", round=2), "ppo")
    rm_two = finished(run / "round_2" / "rm")
    found = stages.resolve_inputs(config(tmp_path, "ppo", round=2), "ppo")
    assert found == {"policy_from": str(sft), "reward_from": str(rm_two), "value_from": str(rm_two)}


def test_round_options_start_from_the_previous_round(tmp_path):
    run = tmp_path / "r"
    finished(run / "sft")
    rm1, ppo1 = finished(run / "rm"), finished(run / "ppo")
    finished(run / "round_2" / "rm")
    cfg = config(tmp_path, "ppo", round=2)
    cfg.loop.policy_from = "previous"
    assert stages.resolve_inputs(cfg, "ppo")["policy_from"] == str(ppo1)
    cfg = config(tmp_path, "rm", round=2)
    cfg.loop.rm_from = "previous"
    assert stages.resolve_inputs(cfg, "rm")["init_from"] == str(rm1)
    cfg = config(tmp_path, "collect", round=3)  # round 2 has no policy yet
    with pytest.raises(ConfigError, match=r"round 3 reads round 2's ppo: .*round_2/ppo/final, which does not "
                                          r"exist: run `rlhf stage=pipeline run=r loop.round=2` first"):
        stages.resolve_inputs(cfg, "collect")


def test_round_one_collects_on_the_sft_policy_and_variants_keep_their_rounds(tmp_path):
    run = tmp_path / "r"
    sft = finished(run / "sft")
    assert stages.resolve_inputs(config(tmp_path, "collect"), "collect")["policy"] == str(sft)
    own = finished(run / "ppo@seed=1")
    cfg = config(tmp_path, "collect", round=2, variant="seed=1")
    assert cfg.stage_dir == run / "round_2" / "collect@seed=1"
    assert stages.resolve_inputs(cfg, "collect")["policy"] == str(own)


def test_the_pipeline_of_a_later_round_collects_and_keeps_round_ones_sft():
    assert stages.pipeline_stages() == ["sft", "rm", "ppo", "compare"]
    assert stages.pipeline_stages(round=2) == ["collect", "rm", "ppo", "compare"]
    assert "sft" not in stages.pipeline_stages(round=3, optional=True)
    # round 1 collects only when named: the SFT policy's answers (data with prompts and no comparisons)
    assert "collect" not in stages.pipeline_stages() and "collect" in stages.pipeline_stages(optional=True)


def test_the_reward_model_reads_every_collected_file_up_to_its_round(tmp_path):
    run = tmp_path / "r"
    one = finished(run / "round_2" / "collect", "comparisons.jsonl")
    two = finished(run / "round_3" / "collect", "comparisons.jsonl")
    finished(run / "round_4" / "collect", "comparisons.jsonl")
    cfg = config(tmp_path, "rm", round=3)
    assert stages.collected_files(cfg) == {2: one, 3: two}
    assert set(lineage.upstream(cfg, "rm")) == {"init_from", "collected:round_2", "collected:round_3"}
    # DPO reads the same comparisons as the reward model: the collected files too
    dpo = config(tmp_path, "dpo", round=3)
    assert set(lineage.upstream(dpo, "dpo")) == {"init_from", "collected:round_2", "collected:round_3"}
    assert [s.name for s in stages.with_collected(dpo, "DPO").sources] == ["collected_round_2", "collected_round_3"]
    cfg.rm.use_collected = False
    assert set(lineage.upstream(cfg, "rm")) == {"init_from"}
    assert stages.with_collected(cfg, "RM") is cfg.data


def test_a_changed_round_one_policy_changes_round_twos_fingerprint(tmp_path):
    run = tmp_path / "r"
    finished(run / "sft")
    ppo = finished(run / "ppo")
    (ppo / "model.safetensors").write_bytes(b"one")
    cfg = config(tmp_path, "collect", round=2)
    before = lineage.fingerprint(cfg, "collect")["sha256"]
    (ppo / "model.safetensors").write_bytes(b"two")
    assert lineage.fingerprint(cfg, "collect")["sha256"] != before


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_every_setting_a_stage_reads_changes_its_fingerprint_and_no_other_does(tmp_path, stage):
    def sha(**kw):
        return lineage.fingerprint(config(tmp_path, stage, **kw), stage)["sha256"]

    same = sha()
    assert sha(data=DataConfig(toy=ToyConfig(num_prompts=500))) != same  # the data themselves
    assert sha(data=DataConfig(max_response_tokens=8)) != same  # how they are read
    assert sha(seed=1) != same
    from rlhf.config import LoggerConfig

    assert sha(logger=LoggerConfig(every_steps=1)) == same  # how a run logs never decides its output


def test_compare_shows_every_rounds_policies(tmp_path):
    run = tmp_path / "r"
    for name in ("sft", "rm", "ppo", "round_2/rm", "round_2/ppo", "round_2/ppo@seed=1", "round_3/ppo"):
        finished(run / name)
    policies = stages.compare_policies(config(tmp_path, "compare", round=2))
    assert list(policies) == ["sft", "ppo", "round_2/ppo", "round_2/ppo@seed=1", "round_3/ppo", "bon:4"]
    assert policies["round_2/ppo"] == str(run / "round_2" / "ppo" / "final")
    assert stages.latest_policy(config(tmp_path, "generate")) == str(run / "round_3" / "ppo" / "final")


def test_loop_and_collect_settings_are_checked():
    bad = RLHFConfig(stage=StageConfig("collect"))
    bad.loop.round, bad.loop.rm_from, bad.loop.policy_stage = 0, "last", "rm"
    bad.collect.answers_per_prompt, bad.collect.splits, bad.collect.labeller = 1, ["train"], "crowd"
    with pytest.raises(ConfigError) as e:
        check(bad)
    for field in ("loop.round=0", "loop.rm_from='last'", "loop.policy_stage='rm'", "collect.answers_per_prompt=1",
                  "collect.splits=['train']", "collect.labeller='crowd'"):
        assert field in str(e.value)
    hh = RLHFConfig(stage=StageConfig("collect"))
    hh.data = DataConfig(format=DataFormat.hh_rlhf, path="x.jsonl")
    with pytest.raises(ConfigError, match="collect.labeller=gold ranks by the toy task's gold scorer"):
        check(hh)


# ---- the simulated labeller -----------------------------------------------------------------


def test_the_simulated_labeller_ranks_by_gold_up_to_its_noise():
    rng = random.Random(0)
    prompts = [p.prompt for p in toy.generate(ToyConfig(num_prompts=2000, seed=3)) if hasattr(p, "responses")]
    outcomes = Counter()
    for prompt in prompts:
        target = toy.answer(prompt).split()
        texts = sorted({" ".join(target), " ".join(toy.flaw(target, "swap", rng)), toy.wrong_digit(prompt, rng),
                        " ".join(toy.flaw(target, "drop_last", rng))})
        noiseless, ranks0 = toy.gold_ranking(prompt, texts, 0.0, random.Random(1))
        gold = [toy.gold_score(prompt, t) for t in noiseless]
        assert gold == sorted(gold, reverse=True)  # best first
        assert [ranks0[i] < ranks0[i + 1] for i in range(len(gold) - 1)] == [gold[i] > gold[i + 1]
                                                                             for i in range(len(gold) - 1)]
        noisy, ranks = toy.gold_ranking(prompt, texts, 0.25, rng)
        assert ranks == ranks0  # the ranks stay in stated order; the answers may swap
        if len(set(ranks0)) < 2:
            continue
        moved = [i for i, (a, b) in enumerate(zip(noisy, noiseless)) if a != b]
        outcomes["records"] += 1
        if moved:
            assert len(moved) == 2 and moved[1] == moved[0] + 1  # one adjacent pair, swapped
            assert ranks0[moved[0]] < ranks0[moved[1]]  # never a tie: that would change nothing
            outcomes["swapped"] += 1
    rate = outcomes["swapped"] / outcomes["records"]
    assert outcomes["records"] > 500 and abs(rate - 0.25) < 0.04, outcomes


def test_wrong_digit_is_the_answer_with_one_item_replaced():
    rng = random.Random(0)
    for prompt in ("sort ascending: 3 1 2", "sort descending: 9 9 0 4 4 1"):
        for _ in range(50):
            wrong = toy.wrong_digit(prompt, rng)
            assert toy.wrong_digit_near_miss(prompt, wrong)
            assert toy.gold_score(prompt, wrong) == pytest.approx(1 - 1 / len(wrong.split()))
    assert not toy.wrong_digit_near_miss("sort ascending: 3 1 2", "1 2 3")
    assert not toy.wrong_digit_near_miss("sort ascending: 3 1 2", "2 1 3")  # a swap: two positions
    assert not toy.wrong_digit_near_miss("sort ascending: 3 1 2", "1 2")


# ---- the collected file's format and the refusal of unranked records --------------------------


def collected_record(ranks):
    return {"prompt": "sort ascending: 3 1 2", "split": "rm", "labeller": None,
            "responses": [{"text": t, "rank": r, "policy": "runs/a/ppo/final", "seed": s, "temperature": 1.0,
                           "ended": True} for t, r, s in zip(["1 2 3", "1 3 2", "2 1 3"], ranks, [5, 6, 7])]}


def test_a_ranked_collected_record_is_a_k_wise_comparison():
    [c] = ranked(collected_record([0, 1, 1]), FieldMap(), "collected_round_2")
    assert c.responses == ("1 2 3", "1 3 2", "2 1 3") and c.ranks == (0, 1, 1)
    assert list(c.pairs()) == [(0, 1), (0, 2)]


def test_an_unranked_record_is_refused_naming_the_field():
    with pytest.raises(RecordError, match=r"responses\[0\]\.rank.*not ranked yet") as e:
        ranked(collected_record([None, None, None]), FieldMap(), "collected_round_2")
    assert e.value.kind == "unranked"


def test_loading_an_unranked_file_names_the_file_and_its_first_unranked_line(tmp_path, tokenizer):
    path = tmp_path / "comparisons.jsonl"
    path.write_text(json.dumps(collected_record([0, 2, 1])) + "\n" + json.dumps(collected_record([None] * 3)) + "\n")
    data = DataConfig(format=DataFormat.ranked, path=str(path))
    data.splits.sft = data.splits.ppo = data.splits.eval = 0.0
    data.splits.rm = 1.0
    with pytest.raises(DataError, match=rf"{path} line 2: field 'responses\[0\]\.rank': not ranked yet"):
        load_data(data, tokenizer)


# ---- rlhf-rank: a person (or a rule standing in for one) fills the ranks ----------------------


def test_an_order_typed_best_first_becomes_ranks_with_ties():
    from rlhf.rank.terminal import parse_order

    assert parse_order("2 1 3", 3) == [1, 0, 2]
    assert parse_order("2=1 3 4", 4) == [0, 0, 1, 2]
    assert parse_order("3=1=2", 3) == [0, 0, 0]  # parsed; the tool then asks again (all tied)
    for bad in ("1 2", "1 2 2", "1 2 4", "", "a b c", "1 = 2 3"):
        assert parse_order(bad, 3) is None, bad


def test_rank_by_a_rule_fills_every_rank_drops_all_tied_and_the_rm_data_layer_reads_it(tmp_path, tokenizer):
    from rlhf.rank import main

    path = tmp_path / "comparisons.jsonl"
    same_length = collected_record([None] * 3)
    for r, text in zip(same_length["responses"], ["1 2 3", "1 3 2", "3 2 1"]):
        r["text"] = text
    lengths = collected_record([None] * 3)
    for r, text in zip(lengths["responses"], ["1 2 3", "1 2", "1 2 3 4"]):
        r["text"] = text
    path.write_text(json.dumps(same_length) + "\n" + json.dumps(lengths) + "\n")
    assert main([str(path), "--by", "shorter"]) == 0
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["rank"] for r in record["responses"]] == [1, 0, 2] and record["labeller"] == "rule:shorter"
    data = DataConfig(format=DataFormat.ranked, path=str(path))
    data.splits.sft = data.splits.ppo = data.splits.eval = 0.0
    data.splits.rm = 1.0
    [c] = load_data(data, tokenizer).splits["rm"].comparisons
    assert c.responses == ("1 2", "1 2 3", "1 2 3 4") and c.ranks == (0, 1, 2)


def test_a_person_ranks_in_the_terminal_and_stopping_keeps_the_work(tmp_path, monkeypatch):
    from rlhf.rank import main

    path = tmp_path / "comparisons.jsonl"
    path.write_text("".join(json.dumps(collected_record([None] * 3)) + "\n" for _ in range(3)))
    answers = iter(["1 1 2", "3=1 2", "q"])  # a bad order is asked again
    monkeypatch.setattr("builtins.input", lambda _: next(answers))
    assert main([str(path)]) == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["rank"] for r in records[0]["responses"]] == [0, 1, 0] and records[0]["labeller"] == "person"
    assert all(r["rank"] is None for r in records[1]["responses"])  # after q: still to do


def test_collect_will_not_overwrite_ranks_given_by_hand(tmp_path):
    from rlhf.stages.collect import _ranked_by_hand

    path = tmp_path / "comparisons.jsonl"
    simulated = {**collected_record([0, 1, 2]), "labeller": "gold (label_noise 0.1)"}
    path.write_text(json.dumps(simulated) + "\n" + json.dumps(collected_record([None] * 3)) + "\n")
    assert _ranked_by_hand(path) == 0  # the simulated labeller's work can be redone at will
    path.write_text(path.read_text() + json.dumps({**collected_record([0, 1, 2]), "labeller": "person"}) + "\n")
    assert _ranked_by_hand(path) == 1


def test_submit_chains_rounds_each_with_its_own_stages():
    """jobs/submit.sh --rounds: round 2's jobs (collect rm ppo compare, loop.round=2) wait for
    round 1's last one; nothing is submitted with --dry-run (no Slurm needed)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["jobs/submit.sh", "--dry-run", "--rounds", "1 2", "run=x"], cwd=root, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    jobs = [(line.split("stage=")[1].split()[0], line.split("loop.round=")[1].split()[0]) for line in lines]
    assert jobs == [("sft", "1"), ("rm", "1"), ("ppo", "1"), ("compare", "1"),
                    ("collect", "2"), ("rm", "2"), ("ppo", "2"), ("compare", "2")]
    assert "afterok:<job id of round_1/compare>" in lines[4] and "--job-name rlhf-round_2-collect" in lines[4]


def test_a_later_rounds_pipeline_names_collect_instead_of_sft():
    cfg = RLHFConfig(stage=StageConfig("pipeline"), stages=["sft", "rm", "bon_sft", "compare"], loop=LoopConfig(round=2))
    with pytest.raises(ConfigError, match=r"sft of round 1 serves later rounds: name collect instead, e.g. "
                                          r"stages=\[collect, rm, bon_sft, compare\]"):
        check(cfg)
    cfg.stage = StageConfig("collect")  # an experiment's stages= is for its pipeline, not for one stage
    check(cfg)
