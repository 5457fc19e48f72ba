import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import DataConfig, DataFormat, ModelConfig, OnError, SplitConfig
from rlhf.models import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "data" / "examples"

# Tests never reach a hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under `pytest -n N` (pytest-xdist) N workers share the cores: one torch thread for each worker and
# the processes it starts, instead of N threads each spinning over the others.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def cli_command(*args: str, ranks: int = 1) -> list[str]:
    """The command line of `rlhf ARGS` (`python -m rlhf.cli`, this interpreter); with ranks > 1,
    under torchrun (`python -m torch.distributed.run --nproc_per_node RANKS`). For tests that
    start the process themselves (Popen, to signal it mid-run); the others use run_cli."""
    if ranks == 1:
        return [sys.executable, "-m", "rlhf.cli", *args]
    # torchrun's default port (29500) is one for all: two tests launching at once (pytest -n 2) would
    # meet on it, so each launch gets a port that is free now
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(free_port()),
            "-m", "rlhf.cli", *args]


def free_port() -> int:
    """A TCP port that nothing on this machine listens on now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, cwd, expect: int = 0, timeout: float = 600, env: dict | None = None,
            input: str | None = None, ranks: int = 1) -> subprocess.CompletedProcess:
    """Runs `rlhf ARGS` in `cwd` and returns the finished process (text stdout and stderr); an
    exit code other than `expect` fails the test with the tail of both streams. Also the
    `run_cli` fixture (session scope, so fixtures of any scope can use it); module-level helpers
    import it from here."""
    __tracebackhide__ = True  # a failure points at the caller's line
    out = subprocess.run(cli_command(*args, ranks=ranks), cwd=cwd, env=env, input=input, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != expect:
        pytest.fail(f"`rlhf {' '.join(args)}` in {cwd} exited {out.returncode}, expected {expect}:\n"
                    f"--- stdout (tail)\n{out.stdout[-3000:]}\n--- stderr (tail)\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session", name="run_cli")
def run_cli_fixture():
    return run_cli


# The trained toy SFT policy and reward model that e2e modules start from (tests/e2e/test_resume.py,
# tests/vllm/test_vllm_stage3.py): small enough to train in seconds, with a checkpoint every 10 steps
# so that a killed run has one to resume from.
TOY_DATA = ["data.toy.num_prompts=3000", "logger.every_steps=1"]
TOY_SFT = ["stage=sft", "sft.max_steps=60", "sft.per_device_batch_size=8", "sft.save_every_steps=10",
           "sft.save_total_limit=10", "sft.eval_every_steps=0", "sft.gold_eval_prompts=0", "sft.learning_rate=1e-3"]
TOY_RM = ["stage=rm", "rm.max_steps=60", "rm.per_device_batch_size=4", "rm.save_every_steps=10", "rm.save_total_limit=10",
          "rm.eval_every_steps=0", "rm.normalize_max_demonstrations=32", "rm.learning_rate=1e-4"]


@pytest.fixture(scope="session")
def toy_sft_rm(tmp_path_factory) -> Path:
    """A root whose runs/whole/sft and runs/whole/rm hold TOY_SFT and TOY_RM trained on TOY_DATA,
    once per test session. Modules copy them into a root of their own (copy_toy_sft_rm) rather
    than write beside them."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        root = tmp_path_factory.mktemp("toy_sft_rm")
        for stage in (TOY_SFT, TOY_RM):
            run_cli(*TOY_DATA, "run=whole", *stage, cwd=root, timeout=600)
        return root
    # under pytest -n N: trained once, by whichever worker asks first, in the folder the workers share
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "toy_sft_rm"
    with FileLock(f"{root}.lock"):
        if not (root / "trained").exists():
            root.mkdir(exist_ok=True)
            for stage in (TOY_SFT, TOY_RM):
                run_cli(*TOY_DATA, "run=whole", *stage, cwd=root, timeout=600)
            (root / "trained").touch()
    return root


def copy_toy_sft_rm(shared: Path, root: Path, run: str = "whole") -> None:
    """The session's trained SFT and RM as runs/RUN/{sft,rm} under ROOT, where rlhf finds them
    as that run's own (up to date with TOY_SFT and TOY_RM)."""
    import shutil

    for stage in ("sft", "rm"):
        shutil.copytree(shared / "runs" / "whole" / stage, root / "runs" / run / stage, symlinks=True)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(ModelConfig())


def every_split() -> SplitConfig:
    """All four splits share every prompt: small fixtures then reach every split."""
    return SplitConfig(sft=1.0, rm=1.0, ppo=1.0, eval=1.0, shared=["sft", "rm", "ppo", "eval"])


def data_config(path, fmt: str, **kw) -> DataConfig:
    kw.setdefault("splits", every_split())
    if "on_error" in kw:
        kw["on_error"] = OnError[kw["on_error"]]
    return DataConfig(name="test", format=DataFormat[fmt], path=str(path), **kw)


def write_lines(path: Path, lines: list) -> Path:
    """Writes each item as one line: dicts as JSON, strings verbatim (to plant bad JSON)."""
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


def manifest(run_folder: Path, stage: str) -> dict:
    """The manifest a stage wrote in a run's folder (runs/<run>/<stage>/manifest.json)."""
    return json.loads((run_folder / stage / "manifest.json").read_text())


def tiny_roles(tokenizer, reward=None, *, critic: bool = False, reward_bias: float | None = None):
    """Stage-3 roles of tiny untrained models, built in one order from torch's seed 0: the
    policy, a reward model (unless `reward` gives a source; `reward_bias`: its saved
    normalisation), a critic (with `critic`), the reference."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import REWARD_NORM_KEY, build_tiny_model
    from rlhf.stages.online_rl.roles import Roles

    def score_model():
        model = AutoModelForSequenceClassification.from_config(policy.config)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    torch.manual_seed(0)
    policy = build_tiny_model(ModelConfig(), tokenizer)
    policy.config.num_labels = 1  # the score models built from its config have one output
    if reward is None:
        reward = score_model().eval()
        if reward_bias is not None:
            setattr(reward.config, REWARD_NORM_KEY, {"bias": reward_bias})
    value = score_model() if critic else None
    return Roles(policy=policy, ref=build_tiny_model(ModelConfig(), tokenizer).eval(), reward=reward, critic=value)


def trainable(roles, p, lr: float):
    """The roles' policy and critic as the loop trains them: local engines stepping AdamW at
    `lr` (`p`: the stage-3 settings they read). Returns the roles."""
    from rlhf.stages.online_rl.roles import adamw, local_engine

    roles.policy = local_engine(roles.policy, adamw(roles.policy.parameters(), lr), p)
    if roles.critic is not None:
        roles.critic = local_engine(roles.critic, adamw(roles.critic.parameters(), lr), p)
    return roles


def start_label_server(path: Path, tokens: dict[str, str], *extra: str) -> tuple[subprocess.Popen, str]:
    """`rlhf-rank PATH --web` with these labellers (a --tokens file beside PATH) on a free port;
    returns the process and its URL once it answers. The caller stops it (SIGINT exports)."""
    import time
    import urllib.request

    token_file = path.with_name(path.name + ".tokens")
    token_file.write_text("".join(f"{name} {token}\n" for name, token in tokens.items()))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "rlhf.rank", str(path), "--web", "--port", str(port),
                               "--tokens", str(token_file), *extra], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"rlhf-rank --web exited {server.returncode}:\n{server.stdout.read()}")
        try:
            urllib.request.urlopen(url + "/api/health", timeout=1)
            return server, url
        except OSError:
            time.sleep(0.2)
    server.kill()
    pytest.fail("rlhf-rank --web did not answer within 60 s")
