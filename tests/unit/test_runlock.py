"""One writer per run: runs/<run>/.lock is held while a command's stages write; a second process
is refused with the holder named, a lock left by a killed process is taken over and said so,
and generate, which writes nothing another stage reads, runs beside a holder."""

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from rlhf import stages
from rlhf.config import ConfigError, LoggerBackend, LoggerConfig, RLHFConfig, StageConfig
from rlhf.core.runlock import run_lock
from rlhf.pipeline import run_stages
from tests.conftest import ROOT

# Takes the lock in a process of its own: prints "locked" once it holds it, then waits for
# stdin to close (or for a kill); refused, prints the error and exits 2.
HOLD = """
import sys
from rlhf.config import ConfigError
from rlhf.core.runlock import run_lock
try:
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
except ConfigError as e:
    print(e, flush=True)
    sys.exit(2)
"""


def holder(run_dir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    run_dir = tmp_path / "r"
    with run_lock(run_dir):
        record = json.loads((run_dir / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"] and record["command"]
        other = holder(run_dir)
        out, _ = other.communicate(timeout=60)
        assert other.returncode == 2
        assert f"run 'r' is in use: {run_dir / '.lock'} is held by pid {os.getpid()} on {record['host']}" in out
    assert (run_dir / ".lock").read_text() == ""  # released cleanly: nothing to take over
    other = holder(run_dir)
    assert other.stdout.readline().strip() == "locked"
    other.communicate("", timeout=60)
    assert other.returncode == 0


def test_the_lock_of_a_killed_process_is_taken_over_and_said_so(tmp_path, caplog):
    run_dir = tmp_path / "r"
    dead = holder(run_dir)
    assert dead.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"held by pid {dead.pid} "):
        with run_lock(run_dir):
            pass
    dead.send_signal(signal.SIGKILL)
    dead.communicate(timeout=60)
    with caplog.at_level(logging.WARNING, logger="rlhf.core.runlock"):
        with run_lock(run_dir):
            assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {dead.pid} on " in caplog.text and "which is no longer running" in caplog.text


CALLS: list[str] = []


def run(cfg, stage_run):
    """The entry of the dummy stages below (`module` = this test module)."""
    CALLS.append(cfg.stage.name)


@pytest.fixture
def dummy_stages(monkeypatch):
    monkeypatch.setitem(stages.STAGES, "writer", stages.Stage("writer", __name__, "dummy", "prepare"))
    monkeypatch.setitem(stages.STAGES, "reader", stages.Stage("reader", __name__, "dummy", "prepare",
                                                              writes_run=False))
    CALLS.clear()


def test_a_command_holds_the_lock_while_its_stages_run_and_generate_takes_none(dummy_stages, tmp_path):
    assert not stages.STAGES["generate"].writes_run  # to look at a checkpoint while training runs
    assert all(stages.STAGES[name].writes_run for name in ("prepare", "sft", "rm", "ppo", "dpo", "bon_sft", "compare"))

    def cfg(name):
        c = RLHFConfig(runs_dir=str(tmp_path), run="r", stage=StageConfig(name),
                       logger=LoggerConfig(backend=LoggerBackend.none))
        return c, OmegaConf.structured(c)

    with run_lock(tmp_path / "r"):  # another command's lock (one process: flock locks per open file)
        with pytest.raises(ConfigError, match="run 'r' is in use"):
            run_stages(*cfg("writer"))
        run_stages(*cfg("reader"))
    assert CALLS == ["reader"]
    # released when the command ends (a Hydra multirun runs its jobs one after another in one process)
    run_stages(*cfg("writer"))
    run_stages(*cfg("writer"))
    assert CALLS == ["reader", "writer", "writer"]


# Under torchrun: rank 0 tries the lock, which the test holds; every rank must stop, not only
# rank 0 (the others would wait for it in their first collective).
RANKS = """
import sys
import torch
from rlhf.config import ConfigError
from rlhf.core import distributed
from rlhf.core.runlock import run_lock
distributed.init(use_deepspeed=False)
try:
    with run_lock(sys.argv[1]):
        print(f"rank {distributed.rank()} went on", flush=True)
except ConfigError as e:
    print(f"rank {distributed.rank()} refused: {e}", flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()  # (gloo aborts the process at exit otherwise, now and then)
"""


@pytest.mark.distributed
def test_under_torchrun_every_rank_is_refused(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    run_dir = tmp_path / "r"
    with run_lock(run_dir):
        # (--standalone: a free port, not one another test may hold)
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              str(script), str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} refused: run 'r' is in use: {run_dir / '.lock'} is held by pid {os.getpid()}" in out.stdout
    assert "went on" not in out.stdout
