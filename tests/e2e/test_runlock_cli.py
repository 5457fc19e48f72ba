"""Two commands on one run cannot collide: a second `rlhf` on a run a stage is training in stops
at once (exit 2, naming the holder); once the holder is killed with SIGKILL, the next command
takes the lock over and says so."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import cli_command, run_cli

pytestmark = pytest.mark.slow

DATA = ["run=x", "data.toy.num_prompts=300", "logger=none"]
# Trains far longer than the test lasts; no checkpoints, no evaluation.
LONG_SFT = ["stage=sft", "sft.max_steps=100000", "sft.save_every_steps=0", "sft.eval_every_steps=0",
            "sft.gold_eval_prompts=0"]


def lock_holder(lock) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_command_is_refused_and_a_killed_holders_lock_taken_over(tmp_path):
    lock = tmp_path / "runs" / "x" / ".lock"
    first = subprocess.Popen(cli_command(*DATA, *LONG_SFT), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while lock_holder(lock) != first.pid:
            assert first.poll() is None, f"sft ended early: {first.stdout.read()[-3000:]}"
            assert time.time() < deadline, f"{lock} does not name pid {first.pid} after 120 s"
            time.sleep(0.1)

        second = run_cli(*DATA, *LONG_SFT, cwd=tmp_path, expect=2, timeout=120)
        said = second.stdout + second.stderr
        assert f"run 'x' is in use: runs/x/.lock is held by pid {first.pid} on " in said
        assert "Traceback" not in said and first.poll() is None  # the holder trains on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)

    third = run_cli(*DATA, "stage=prepare", cwd=tmp_path, timeout=120)
    said = third.stdout + third.stderr
    assert f"taking over the lock of pid {first.pid} on " in said and "which is no longer running" in said
    assert lock.read_text() == ""  # and released at its end
