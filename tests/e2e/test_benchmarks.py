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
