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
    assert result["episodes"] == 16 and result["episodes_per_s"] > 0


def test_the_floor_script_times_each_model_call():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grpo_floor.py"), "--batch", "8", "--response-len", "6",
                          "--prompt-len", "5", "--repeats", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    parts = ("decode_s", "reference_s", "reward_s", "train_minibatch_s")
    assert all(result[k] > 0 for k in parts)
    assert result["update_s"] == pytest.approx(sum(result[k] for k in parts[:3]) + 2 * result["train_minibatch_s"],
                                               abs=1e-3)


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
