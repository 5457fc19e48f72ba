"""`rlhf stage=pipeline`: sft -> rm -> ppo -> compare in one run directory; a second run skips
every stage; a changed PPO setting reruns PPO and what follows it, nothing before."""

import json

import pytest

from tests.conftest import manifest, run_cli

pytestmark = pytest.mark.slow

SMALL = ["data.toy.num_prompts=1000", "sft.max_steps=20", "sft.gold_eval_prompts=8", "rm.max_steps=10",
         "rm.normalize_max_demonstrations=32", "ppo.updates=2", "ppo.eval_prompts=8", "ppo.critic_warmup_updates=0",
         "compare.prompts=8", "compare.samples_per_prompt=1", "compare.bootstrap_resamples=50"]
STAGES = ("sft", "rm", "ppo", "compare")


# Library messages about our own choices, which a user cannot act on: they must not reach the console.
NOISE = ("Setting accelerator to CPU", "FutureWarning", "mean_resizing")


def pipeline(cwd, *args):
    out = run_cli("stage=pipeline", *SMALL, *args, cwd=cwd, timeout=900)
    log = out.stdout + out.stderr
    assert not [n for n in NOISE if n in log], [line for line in log.splitlines() if any(n in line for n in NOISE)]
    return {s for s in STAGES if f"stage {s} -> " in log}, {s for s in STAGES if f"{s}: up to date" in log}


def test_pipeline_runs_every_stage_then_skips_what_is_up_to_date(tmp_path):
    ran, skipped = pipeline(tmp_path)
    assert ran == set(STAGES) and not skipped
    first = {s: manifest(tmp_path / "runs" / "default", s) for s in STAGES}
    for s in STAGES:  # lineage: inputs by path and content hash, and the output's hash
        assert first[s]["status"] == "completed" and len(first[s]["fingerprint"]) == 64
        assert first[s]["outputs"]["sha256"]
    assert first["ppo"]["lineage"]["policy_from"]["content"] == first["sft"]["outputs"]["sha256"]
    assert first["ppo"]["lineage"]["reward_from"]["content"] == first["rm"]["outputs"]["sha256"]

    ran, skipped = pipeline(tmp_path)
    assert not ran and skipped == set(STAGES)
    assert {s: manifest(tmp_path / "runs" / "default", s) for s in STAGES} == first  # nothing rewritten

    ran, skipped = pipeline(tmp_path, "ppo.learning_rate=3e-5")  # a PPO setting: PPO and compare rerun
    assert ran == {"ppo", "compare"} and skipped == {"sft", "rm"}
    assert manifest(tmp_path / "runs" / "default", "ppo")["outputs"]["sha256"] != first["ppo"]["outputs"]["sha256"]

    ran, skipped = pipeline(tmp_path, "ppo.learning_rate=3e-5", "stages=[rm,ppo]")
    assert not ran and skipped == {"rm", "ppo"}

    ran, skipped = pipeline(tmp_path, "ppo.learning_rate=3e-5", "rm.learning_rate=2e-5")  # RM: all after it
    assert ran == {"rm", "ppo", "compare"} and skipped == {"sft"}


def test_pipeline_refuses_unknown_or_reordered_stages(tmp_path):
    out = run_cli("stage=pipeline", "stages=[ppo,sft]", cwd=tmp_path, expect=2, timeout=300)
    assert "stages=['ppo', 'sft']" in out.stdout + out.stderr


def test_a_dpo_pipeline_without_a_reward_model_is_compared_by_the_gold_scorer(tmp_path):
    """sft -> dpo -> compare: no RM anywhere, so compare judges by gold alone and sets no bon:4;
    a changed comparison setting (the pairs) reruns dpo and compare, not sft."""
    args = ["stages=[sft,dpo,compare]", "dpo.max_steps=4", "dpo.gold_eval_prompts=8", "dpo.train_accuracy_pairs=8",
            "dpo.learning_rate=1e-3"]
    out = run_cli("stage=pipeline", *SMALL, *args, cwd=tmp_path, timeout=900)
    log = out.stdout + out.stderr
    assert all(f"stage {s} -> " in log for s in ("sft", "dpo", "compare")) and "stage rm -> " not in log
    assert "judged by the gold scorer alone" in log
    results = json.loads((tmp_path / "runs" / "default" / "compare" / "results.json").read_text())
    assert set(results["policies"]) == {"sft", "dpo"}
    row = results["modes"]["sampled"]["dpo"]
    assert row["rm_score"] is None and row["win_rate_gold"] is not None
    samples = [json.loads(x) for x in (tmp_path / "runs" / "default" / "compare" / "samples.jsonl").read_text().splitlines()]
    golds = [x["gold_score"] for x in samples if (x["policy"], x["mode"]) == ("dpo", "sampled")]
    assert len(golds) == 8 and row["gold_score"]["mean"] == pytest.approx(sum(golds) / len(golds))
    assert (tmp_path / "runs" / "default" / "compare" / "report.md").exists()
    run = tmp_path / "runs" / "default"
    assert manifest(run, "dpo")["lineage"]["init_from"]["content"] == manifest(run, "sft")["outputs"]["sha256"]

    out = run_cli("stage=pipeline", *SMALL, *args, "dpo.pairs=best", cwd=tmp_path, timeout=900)
    log = out.stdout + out.stderr
    assert "sft: up to date" in log and "stage dpo -> " in log and "stage compare -> " in log
