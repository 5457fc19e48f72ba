"""`experiment=toy_surpass` (the toy whose demonstrator is worse than its labeller) composes as its
file says and its whole pipeline runs at the smallest size; its tuned figures over 3 seeds are
benchmarks/stage3_study.py's (docs/results.md), not a test's."""

import json
from collections import Counter

import pytest

from rlhf.data import toy
from tests.unit.test_config import load

pytestmark = pytest.mark.slow

SMALLEST = ["data.toy.num_prompts=800", "logger=none", "sft.epochs=4", "sft.gold_eval_prompts=32",
            "rm.max_steps=20", "rm.eval_every_steps=0", "rm.wrong_digit_pairs=0",
            "ppo.updates=2", "ppo.critic_warmup_updates=1", "ppo.rollout_batch_size=16", "ppo.mini_batch_size=16",
            "ppo.eval_prompts=16", "compare.prompts=16", "compare.samples_per_prompt=2",
            "compare.bootstrap_resamples=100"]


def test_the_experiment_sets_a_systematic_demonstrator_and_its_tuned_recipe():
    cfg = load(["experiment=toy_surpass"])
    assert cfg.run == "toy_surpass"
    assert (cfg.data.toy.flawed_fraction, cfg.data.toy.demo_flaws, cfg.data.toy.demo_flaw_mode) == \
        (0.8, ["drop_last"], "systematic")
    assert (cfg.rm.epochs, cfg.ppo.updates, cfg.ppo.beta) == (6, 60, 0.1)
    assert cfg.data.toy.label_noise == 0.1  # the labeller as in the default toy


@pytest.fixture(scope="module")
def run(tmp_path_factory, run_cli):
    root = tmp_path_factory.mktemp("surpass")
    run_cli("experiment=toy_surpass", "stage=prepare", *SMALLEST, cwd=root)
    run_cli("experiment=toy_surpass", "stage=pipeline", *SMALLEST, cwd=root)
    return root / "runs" / "toy_surpass"


def test_prepare_counts_the_demonstrators_flaws_as_the_generator_made_them(run):
    cfg = load(["experiment=toy_surpass", "data.toy.num_prompts=800"]).data.toy
    made = Counter(toy.demonstration_flaw(r.prompt, r.response) for r in toy.generate(cfg) if hasattr(r, "response"))
    counted = json.loads((run / "prepare" / "manifest.json").read_text())["data"]["toy_demonstrations"]
    assert counted == dict(made)
    assert set(made) == {"drop_last", "exact"} and made["drop_last"] > 3 * made["exact"]


def test_the_pipeline_trains_every_stage_and_compares_sft_ppo_and_best_of_4(run):
    for stage in ("sft", "rm", "ppo", "compare"):
        assert json.loads((run / stage / "manifest.json").read_text())["status"] == "completed"
    results = json.loads((run / "compare" / "results.json").read_text())
    assert set(results["modes"]["sampled"]) == {"sft", "ppo", "bon:4"}
    assert set(results["modes"]["greedy"]) == {"sft", "ppo"}
