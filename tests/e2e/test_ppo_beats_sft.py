"""The acceptance runs of stage 3: on the built-in default (SFT, then RM, exactly as `rlhf
stage=pipeline` runs them, seed 0), PPO, GRPO, RLOO, DPO and best-of-n distillation each give a policy whose
sampled answers score higher on the gold scorer than the SFT policy's, on the same held-out eval
prompts."""

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # its first test trains five stages and a sweep

PROMPTS = 512  # gold evaluation of SFT, DPO and bon_sft on the same eval prompts and seed as PPO's


@pytest.fixture(scope="module")
def run(tmp_path_factory, run_cli):
    root = tmp_path_factory.mktemp("default")
    for stage in ("sft", "rm", "ppo", "dpo", "bon_sft"):
        run_cli("logger=none", f"stage={stage}", f"sft.gold_eval_prompts={PROMPTS}", f"dpo.gold_eval_prompts={PROMPTS}",
                f"bon_sft.gold_eval_prompts={PROMPTS}", cwd=root, timeout=900)
    # the two cheapest of the family (no critic), at the episode budget of the study: 40 x 64
    run_cli("-m", "logger=none", "stage=ppo", "algo=grpo,rloo", f"ppo.updates={FAMILY_UPDATES}",
            "ppo.eval_every_updates=0", cwd=root, timeout=900)
    return root / "runs" / "default"


FAMILY_UPDATES = 40


def metrics(run, stage):
    return json.loads((run / stage / "manifest.json").read_text())["metrics"]


def test_ppo_policy_beats_sft_on_the_gold_scorer(run):
    m = metrics(run, "ppo")
    sft, ppo = m["start_gold_sampled_mean"], m["final_gold_sampled_mean"]
    assert sft == pytest.approx(metrics(run, "sft")["gold_sampled_mean"], abs=2e-3)  # the same measurement
    # Measured 0.918 -> 0.932 at the recipe's 20 updates (512 prompts, both policies sampling with
    # the same seed; seeds 1 and 2: +0.014, +0.023). The margin of 0.01, about one standard error
    # of the paired difference, is there so that PPO doing nothing fails; PPO run past its peak
    # (40 updates: 0.852) fails by far.
    assert ppo > sft + 0.01, (sft, ppo)
    assert m["final_gold_sampled_perfect"] > m["start_gold_sampled_perfect"]
    # the greedy answers, near perfect after SFT, are not traded away
    assert m["final_gold_greedy_mean"] > m["start_gold_greedy_mean"] - 0.02


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_critic_free_policies_beat_sft_on_the_gold_scorer(run, algo):
    m = metrics(run, f"ppo@algo={algo}")
    sft, final = m["start_gold_sampled_mean"], m["final_gold_sampled_mean"]
    # Measured 2026-12-01 at 40 x 64 episodes, seeds 0-2 (docs/results.md, stage 3 as a family):
    # GRPO +0.011, +0.017, +0.026; RLOO +0.014, +0.015, +0.027 over SFT on these 512 prompts; with
    # compare's paired win rate by gold clear of 0.5 on every seed; CI's run of this test: GRPO
    # +0.0035. At the recipe's learning rate the gain is small against this measurement's noise,
    # so the test asks only that it is a gain: a policy that does not move scores exactly the
    # SFT's (same prompts, same seed), and one that moved at random falls below it half the time.
    assert final > sft, (sft, final)
    assert m["final_gold_greedy_mean"] > m["start_gold_greedy_mean"] - 0.02


@pytest.mark.parametrize("stage", ["dpo", "bon_sft"])
def test_offline_stage_3_policy_beats_sft_on_the_gold_scorer(run, stage):
    sft, m = metrics(run, "sft"), metrics(run, stage)
    # Measured on seed 0 (256 prompts): SFT 0.916, DPO 0.975, bon_sft 0.962; the 3-seed figures
    # with intervals are in docs/results.md. A margin of 0.02, twice the paired standard error,
    # fails a stage that does nothing or DPO at trl's beta 0.1 (0.900-0.917).
    assert m["gold_sampled_mean"] > sft["gold_sampled_mean"] + 0.02, (sft["gold_sampled_mean"], m)
    assert m["gold_greedy_mean"] > sft["gold_greedy_mean"] - 0.02


def test_dpo_reports_its_preference_metrics(run):
    m = metrics(run, "dpo")
    assert m["eval_reward_accuracy"] > 0.6 and m["train_reward_accuracy"] > 0.6
    assert m["train_loss_last"] < m["train_loss_first"]


def test_bon_sft_trained_on_picks_better_than_the_average_answer(run):
    m = metrics(run, "bon_sft")
    assert m["picks_score_mean"] > m["picks_candidate_score_mean"]
    lines = (run / "bon_sft" / "round_1" / "picks.jsonl").read_text().splitlines()
    assert len(lines) == m["picks_trained"] + sum(not json.loads(x)["ended"] for x in lines)
    first = json.loads(lines[0])
    assert first["score"] == max(x for x in first["candidate_scores"] if x is not None)
