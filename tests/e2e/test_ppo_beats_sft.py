"""The acceptance run of the PPO stage: on the built-in default (SFT, then RM, then PPO, exactly
as `make run` runs them, seed 0), the PPO policy's sampled answers score higher on the gold
scorer than the SFT policy's, on the same held-out eval prompts."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_ppo_policy_beats_sft_on_the_gold_scorer(tmp_path, run_cli):
    for stage in ("sft", "rm", "ppo"):
        # sft.gold_eval_prompts=0: PPO measures its own start
        run_cli("logger=none", f"stage={stage}", "sft.gold_eval_prompts=0", cwd=tmp_path, timeout=900)
    metrics = json.loads((tmp_path / "runs" / "default" / "ppo" / "manifest.json").read_text())["metrics"]
    sft, ppo = metrics["start_gold_sampled_mean"], metrics["final_gold_sampled_mean"]
    # Measured 0.918 -> 0.932 at the recipe's 20 updates (512 prompts, both policies sampling with
    # the same seed; seeds 1 and 2: +0.014, +0.023). The margin of 0.01, about one standard error
    # of the paired difference, is there so that PPO doing nothing fails; PPO run past its peak
    # (40 updates: 0.852) fails by far.
    assert ppo > sft + 0.01, (sft, ppo)
    assert metrics["final_gold_sampled_perfect"] > metrics["start_gold_sampled_perfect"]
    # the greedy answers, near perfect after SFT, are not traded away
    assert metrics["final_gold_greedy_mean"] > metrics["start_gold_greedy_mean"] - 0.02
