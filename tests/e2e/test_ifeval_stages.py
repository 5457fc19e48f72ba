"""Data with verifiable instructions (data=ifeval) through stage 3 and compare, on the tiny
model: GRPO's reward is the verifier (each update's reward is the gold it logs), and compare's
instruction tables agree with the verdicts in its samples."""

import json

import pytest

from tests.conftest import copy_toy_sft_rm, write_lines

pytestmark = pytest.mark.slow
pytest.importorskip("if_verifiable", reason="pip install -e '.[ifeval]'")

KINDS = ["length_constraints:number_words", "keywords:frequency"]
DATA = ["data=ifeval", "data.path=prompts.jsonl", "data.splits.sft=0", "data.splits.rm=0", "data.splits.ppo=0.7",
        "data.splits.eval=0.3"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, toy_sft_rm):
    """The session's toy SFT policy beside 40 toy prompts, each with an instruction that its
    answers follow some of the time: fewer than 4 words, or a digit at least once."""
    root = tmp_path_factory.mktemp("ifeval")
    copy_toy_sft_rm(toy_sft_rm, root)
    rows = []
    for i in range(40):
        digits = f"{i % 7} {(i * 3) % 10} {(i * 7) % 9}"
        if i % 2:
            rows.append({"key": i, "prompt": f"sort ascending: {digits} (in fewer than 4 words)",
                         "instruction_id_list": [KINDS[0]], "kwargs": [{"num_words": 4, "relation": "less than"}]})
        else:
            rows.append({"key": i, "prompt": f"sort descending: {digits} (say {i % 10} at least once)",
                         "instruction_id_list": [KINDS[1]],
                         "kwargs": [{"keyword": str(i % 10), "frequency": 1, "relation": "at least"}]})
    write_lines(root / "prompts.jsonl", rows)
    return root


def test_grpo_against_the_verifier_is_rewarded_by_the_gold_it_reports(root, run_cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(*DATA, "run=whole", "stage=ppo", "reward=verifier", "ppo.advantage=grpo", "ppo.samples_per_prompt=4",
            "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8", "ppo.updates=3", "ppo.eval_prompts=4",
            "ppo.eval_every_updates=0", "ppo.max_new_tokens=12", cwd=root)
    stage = root / "runs" / "whole" / "ppo"
    m = json.loads((stage / "manifest.json").read_text())
    assert m["method"]["label"] == "grpo, verifier (strict, all)"
    assert "reward_from" not in m["inputs"]
    events = EventAccumulator(str(stage / "logs"))
    events.Reload()
    reward = [e.value for e in events.Scalars("ppo/score_raw")]
    gold = [e.value for e in events.Scalars("ppo/gold_score")]
    # strict, all or nothing: the reward is prompt-level strict gold (and some answers follow theirs)
    assert len(reward) == 3 and reward == gold and max(gold) > 0


def test_compare_reports_ifevals_accuracies_as_its_samples_give_them(root, run_cli):
    run_cli(*DATA, "run=whole", "stage=compare", 'compare.policies={sft: runs/whole/sft/final, bon2: "bon:2"}',
            "compare.baseline=sft", "reward=verifier", "compare.reward_from=null", "compare.modes=[sampled]",
            "compare.samples_per_prompt=2", "compare.max_new_tokens=12", "compare.bootstrap_resamples=50", cwd=root)
    out = root / "runs" / "whole" / "compare"
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for name in ("sft", "bon2"):
        mine = [s for s in samples if s["policy"] == name]
        passed = [ok for s in mine for ok in s["instructions"]["strict"]]
        entry = results["modes"]["sampled"][name]
        followed = entry["instructions"]
        # one instruction per prompt: instruction-level strict is the share of answers that follow theirs
        assert followed["instruction_strict"]["mean"] == pytest.approx(sum(passed) / len(passed))
        assert followed["prompt_strict"]["mean"] == pytest.approx(entry["gold_score"]["mean"])
        assert sum(k["instructions"] for k in followed["by_kind"].values()) == len(mine)
        assert set(followed["by_kind"]) <= set(KINDS)
    # best of 2 picks by the verifier: each pick follows its prompt's instruction if a candidate does
    for s in (s for s in samples if s["policy"] == "bon2"):
        assert s["gold_score"] == max(c["pick_score"] for c in s["candidates"])
    report = (out / "report.md").read_text()
    assert "### sampled: instructions followed" in report and "| keywords:frequency |" in report


def test_collect_ranks_the_policys_answers_by_the_share_of_instructions_they_follow(root, run_cli):
    from rlhf.data.instructions import check_constraints, verify

    run_cli(*DATA, "run=whole", "stage=collect", "collect.labeller=verifier", "collect.label_noise=0",
            "collect.splits=[ppo]", "collect.answers_per_prompt=4", "collect.max_new_tokens=12", cwd=root)
    rows = {r["prompt"]: r for r in map(json.loads, (root / "prompts.jsonl").read_text().splitlines())}
    records = [json.loads(line) for line in (root / "runs/whole/collect/comparisons.jsonl").read_text().splitlines()]
    assert records and all(r["labeller"] == "verifier (label_noise 0.0)" for r in records)
    for r in records:
        c = check_constraints(rows[r["prompt"]]["instruction_id_list"], rows[r["prompt"]]["kwargs"])
        shares = [sum(verify(r["prompt"], a["text"], c).strict) / len(c.ids) for a in r["responses"]]
        ranks = [a["rank"] for a in r["responses"]]
        assert shares == sorted(shares, reverse=True) and len(set(ranks)) > 1
        assert all((ranks[i] == ranks[j]) == (shares[i] == shares[j]) for i in range(len(ranks)) for j in range(i))


def test_bon_sft_distils_the_verifiers_picks_on_data_without_demonstrations(root, run_cli):
    """Prompt-only data has no demonstrations for an eval loss: bon_sft trains on the picks
    without one, and each pick is a candidate the verifier scores best."""
    run_cli(*DATA, "run=whole", "stage=bon_sft", "reward=verifier", "bon_sft.n=4", "bon_sft.prompts=8",
            "bon_sft.max_new_tokens=12", "bon_sft.max_steps=2", "bon_sft.eval_every_steps=10",
            "bon_sft.gold_eval_prompts=0", cwd=root)
    stage = root / "runs" / "whole" / "bon_sft"
    picks = [json.loads(line) for line in (stage / "round_1" / "picks.jsonl").read_text().splitlines()]
    assert len(picks) == 8
    for p in picks:
        ended = [s for s in p["candidate_scores"] if s is not None]
        assert p["score"] == (max(ended) if ended else None)
        assert p["score"] is None or p["gold_score"] == p["score"]  # strict, all or nothing: the gold itself
    m = json.loads((stage / "manifest.json").read_text())
    assert m["status"] == "completed" and "eval_loss" not in m["metrics"] and m["metrics"]["steps"] == 2
    assert (stage / "final" / "model.safetensors").exists()
