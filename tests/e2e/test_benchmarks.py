"""The benchmark scripts run against today's package API and print their one JSON line (the
figures themselves live in docs/results.md, not in tests)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

KEYS = {"impl", "episodes", "updates", "wall_s", "episodes_per_s", "peak_rss_mb", "gen_tokens_per_s",
        "generate_s", "score_s", "train_s", "settings"}


@pytest.mark.parametrize("script,flags", [
    ("ppo_throughput.py", ["--batch", "8", "--mini-batches", "2", "--micro-batch-size", "2"]),
    ("grpo_throughput.py", ["--batch", "8", "--group", "4", "--mini-batches", "2"]),
])
def test_benchmark_prints_its_json_line(script, flags):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *flags, "--updates", "2",
                          "--response-len", "6", "--prompt-len", "5"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result), KEYS - set(result)
    assert (result["episodes"], result["updates"]) == (16, 2)  # batch 8 x 2 updates, as asked
    assert {k: result["settings"][k] for k in ("batch", "response_len", "prompt_len")} == \
        {"batch": 8, "response_len": 6, "prompt_len": 5}
    # the phases are timed inside the wall time, not beside it (each figure rounded to 1 ms)
    assert result["generate_s"] + result["score_s"] + result["train_s"] <= result["wall_s"] + 0.002
    assert result["episodes_per_s"] == pytest.approx(16 / result["wall_s"], rel=1e-2)


def test_the_hh_workload_draws_hh_lengths_and_reports_real_tokens():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grpo_throughput.py"), "--workload", "hh",
                          "--vocab", "512", "--hidden", "32", "--intermediate", "64", "--layers", "1", "--batch", "16",
                          "--updates", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {k: result["settings"][k] for k in ("workload", "prompt_len", "response_len", "batch", "vocab")} == \
        {"workload": "hh", "prompt_len": 192, "response_len": 128, "batch": 16, "vocab": 512}  # hh's defaults, flags win
    # answers end at HH's lengths (p50 28 tokens), not at the 128-token limit; prompts up to 192
    assert 5 < result["answer_len_p50"] < 80 and result["prompt_tokens"] < 16 * 192
    assert result["tokens_per_s"] == pytest.approx((result["prompt_tokens"] + result["answer_tokens"]) / result["wall_s"],
                                                   rel=1e-2)
    assert result["answer_tokens"] == pytest.approx(result["gen_tokens_per_s"] * result["generate_s"], rel=2e-2)


@pytest.mark.parametrize("script,parts", [
    ("grpo_floor.py", ("decode_s", "reference_s", "reward_s", "train_epoch_s")),
    ("ppo_floor.py", ("decode_s", "reference_s", "reward_s", "value_s", "train_epoch_s")),
])
def test_the_floor_scripts_time_each_model_call(script, parts):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--batch", "8", "--response-len", "6",
                          "--prompt-len", "5", "--repeats", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(result[k] > 0 for k in parts)
    assert result["update_s"] == pytest.approx(sum(result[k] for k in parts), abs=1e-3)


@pytest.mark.timeout(900)  # every check of the script, one after another
def test_the_gpu_check_rehearses_every_check_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh is meant to run unattended on a GPU machine nobody here has; its
    rehearsal runs the same checks on the CPU at toy sizes, so a broken step shows up here first."""
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-rehearsal", "--out", str(tmp_path),
                          "--python", sys.executable], capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    by_check = {line["check"]: line for line in lines}
    assert set(by_check) == {"env", "tests", "pipeline", "ppo", "ppo_checkpointing", "grpo", "grpo_checkpointing",
                             "grpo_vllm", "zero2"}, out.stderr[-3000:]
    assert by_check["env"]["gpus"] == 0 and not by_check["env"]["ok"]  # no GPU here, and it says so
    failed = {name: line.get("log_tail") for name, line in by_check.items() if name != "env" and line.get("ok") is False}
    assert not failed, failed
    assert set(by_check["pipeline"]["gold_score"]) == {"sft", "ppo", "bon:4"}
    assert "suite runs these test files" in by_check["tests"]["skipped"]  # no nested pytest
    assert by_check["ppo_checkpointing"]["settings"]["gradient_checkpointing"] is True
    # the vLLM engine's check runs where vLLM is installed, and says why not elsewhere
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        assert "make setup-vllm" in by_check["grpo_vllm"]["skipped"]
    else:
        assert by_check["grpo_vllm"]["settings"]["rollout_engine"] == "vllm"


def test_the_stage3_study_pools_seeds_and_pairs_each_policy_with_best_of_4(tmp_path):
    """stage3_study.py --report-only on two hand-made seeds: per-seed figures as compare wrote
    them, their mean [min, max], and each policy's paired difference to bon:4 per prompt."""
    gold = {0: {"sft": [[0.5, 0.5], [1.0, 0.0]], "ppo": [[1.0, 1.0], [1.0, 0.5]], "bon:4": [[1.0, 0.5], [1.0, 1.0]]},
            1: {"sft": [[0.0, 0.5], [1.0, 1.0]], "ppo": [[1.0, 0.5], [1.0, 1.0]], "bon:4": [[0.5, 0.5], [1.0, 1.0]]}}
    for seed, policies in gold.items():
        run = tmp_path / f"toy_surpass_s{seed}"
        (run / "compare").mkdir(parents=True)
        (run / "rm").mkdir()
        (run / "rm" / "manifest.json").write_text(json.dumps({"metrics": {"eval_accuracy": 0.9 + seed / 100}}))
        rows = [{"policy": p, "mode": "sampled", "prompt_index": i, "sample": j, "gold_score": g}
                for p, prompts in policies.items() for i, answers in enumerate(prompts) for j, g in enumerate(answers)]
        (run / "compare" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        modes = {"sampled": {p: {"gold_score": {"mean": sum(map(sum, a)) / 4, "low": 0, "high": 1}, "tokens": 5.0,
                                 "win_rate_gold": None if p == "sft" else {"value": 0.6, "low": 0.5, "high": 0.7}}
                             for p, a in policies.items()}}
        (run / "compare" / "results.json").write_text(json.dumps(
            {"modes": modes, "costs": {"ppo": {"duration_s": 10.0 + seed, "peak_rss_mb": 500.0}}}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage3_study.py"), "--report-only", "--seeds", "0", "1",
                          "--runs-dir", str(tmp_path), "--markdown", str(tmp_path / "t.md")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    ppo = result["summary"]["ppo"]
    assert (ppo["gold_sampled"]["min"], ppo["gold_sampled"]["max"]) == (0.875, 0.875)
    assert ppo["wall_s"] == {"mean": 10.5, "min": 10.0, "max": 11.0, "n": 2}
    # seed 0: per-prompt means ppo (1.0, 0.75) vs bon:4 (0.75, 1.0): 0.0; seed 1: (0.75, 1.0) vs (0.5, 1.0): +0.125
    assert [result["per_seed"][s]["ppo"]["vs_bon_sampled"] for s in ("0", "1")] == [0.0, 0.125]
    assert result["per_seed"]["1"]["sft"]["vs_bon_sampled"] == pytest.approx(((0.25 - 0.5) + (1.0 - 1.0)) / 2)
    assert result["reward_models"] == {"0": {"eval_accuracy": 0.9}, "1": {"eval_accuracy": 0.91}}
    assert "| ppo | – | 0.875 [0.875, 0.875] | 0.062 [0.000, 0.125] |" in (tmp_path / "t.md").read_text()


def test_quality_checks_each_claim_on_the_seeds_it_names():
    """benchmarks/quality.py's claims on hand-made figures of two seeds: "every seed" fails on one
    seed below, "the mean" holds on a mean above, a part not run checks nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = quality  # its dataclass looks its module up there
    spec.loader.exec_module(quality)

    def seed(ppo, dpo, bon_sft, loop):
        return {"policies": {"ppo": {"vs_sft_sampled": ppo}, "dpo": {"vs_sft_sampled": dpo},
                             "bon_sft": {"vs_sft_sampled": bon_sft}, "bon:4": {"vs_sft_sampled": 0.04},
                             "round_2/ppo": {"vs_ppo_sampled": loop}}, "rm": {}}

    parts = {"toy": {0: seed(0.01, 0.03, 0.01, 0.03), 1: seed(-0.002, 0.03, 0.01, -0.01)}}
    checked = quality.check(quality.CLAIMS, parts)
    assert {c["part"] for c in checked} == {"toy"}  # the surpass claims need the surpass part
    by_claim = {c["stated"].split(",")[0].split(" > ")[0]: (c["values"], c["holds"]) for c in checked}
    assert by_claim == {
        "PPO's sampled gold minus SFT's": ([0.01, -0.002], False),  # every seed: seed 1 is below
        "DPO's share of SFT's gap to best-of-4": ([0.75, 0.75], True),
        "bon_sft's share of SFT's gap to best-of-4": ([0.25, 0.25], False),
        "round 2's PPO sampled gold minus round 1's": ([0.03, -0.01], True),  # the mean: +0.01
    }
