"""A non-editable install carries its configs: the wheel built from this tree, installed in a
fresh virtual environment without the checkout, runs `rlhf` from another folder."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# The build works on a copy of the tree: built in place, setuptools would write build/ and
# rlhf.egg-info into the checkout and reuse a stale build/lib/, whose leftovers (a removed config,
# a moved module) would land in the wheel and hide what the tree itself gives.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "runs", "outputs", "multirun", "build", "dist",
                                     "*.egg-info", "__pycache__", ".pytest_cache", "*.out")
DATA = sorted([*(p.relative_to(ROOT / "data").as_posix() for p in (ROOT / "data").rglob("*.jsonl")), "README.md"])
CONFIGS = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
MODULES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "rlhf").rglob("*.py")
                 if "__pycache__" not in p.parts)
STATIC = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "rlhf" / "rank" / "static").iterdir())


def _run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


def _builds_here() -> bool:
    """Whether this interpreter can build the wheel itself (no build isolation, no download):
    setuptools >= 70.1 (the `dev` extra) builds wheels alone, an older one needs `wheel`."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    version = tuple(int(x) for x in setuptools.__version__.split(".")[:2] if x.isdigit())
    return version >= (70, 1) or (version >= (68, 0) and importlib.util.find_spec("wheel") is not None)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("src") / "rlhf"
    shutil.copytree(ROOT, copy, ignore=_NOT_SOURCE)
    return copy


@pytest.fixture(scope="module")
def wheel(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Without isolation where this interpreter has what it takes; else pip fetches setuptools
    # from PyPI into an isolated build environment.
    isolation = ["--no-build-isolation"] if _builds_here() else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", out, tree])
    (built,) = out.glob("rlhf-*.whl")
    return built


def test_wheel_holds_every_config_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "rlhf/conf/config.yaml" in names and "rlhf/conf/hydra/launcher/slurm.yaml" in names
    assert sorted(n.removeprefix("rlhf/conf/") for n in names if n.startswith("rlhf/conf/")) == CONFIGS
    # Package discovery: every subpackage of rlhf is in, none listed by hand.
    assert set(MODULES) <= names
    assert set(STATIC) <= names  # the labelling page's own files (rlhf-rank --web)
    # data/'s prompt files, which configs name as ${builtin_data:...} (experiment=smollm2_ifeval)
    assert sorted(n.removeprefix("rlhf/builtin_data/") for n in names if n.startswith("rlhf/builtin_data/")) == DATA
    assert {n.split("/")[0] for n in names} == {"rlhf", wheel.name.split("-py")[0] + ".dist-info"}


@pytest.mark.skipif(not _builds_here(), reason="building the sdist here needs setuptools >= 70.1 (the dev extra)")
def test_sdist_holds_the_configs(tree, tmp_path):
    # What `python -m build` does first: a wheel built from this sdist needs conf/ and setup.py in it.
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
          tmp_path], cwd=tree)
    (sdist,) = tmp_path.glob("rlhf-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert {"setup.py", "setup.cfg", "pyproject.toml"} <= names
    assert {f"conf/{c}" for c in CONFIGS} <= names and set(MODULES) <= names


def test_installed_wheel_runs_rlhf_from_another_folder(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # This interpreter's pip installs into the fresh environment (pip >= 22.3), before the .pth
    # below exists: pip then sees no rlhf but the one it installs.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])
    # The dependencies (torch, transformers, hydra, ...) come from this interpreter's
    # site-packages, named in a .pth: a plain directory on sys.path, whose own .pth files (this
    # environment's editable rlhf finder among them) are not run.
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "zz_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import json, sys, rlhf, rlhf.cli; print(json.dumps({'rlhf': rlhf.__file__, "
             "'conf': str(rlhf.cli.CONF_DIR), 'editable': [m for m in sys.modules if 'editable' in m]}))")
    where = json.loads(_run([python, "-c", probe], cwd=elsewhere, env=env).stdout.splitlines()[-1])
    assert Path(where["rlhf"]).resolve().is_relative_to(env_dir.resolve()), where
    assert Path(where["conf"]) == Path(where["rlhf"]).resolve().parent / "conf", where
    assert where["editable"] == [], where

    rlhf = env_dir / "bin" / "rlhf"
    composed = yaml.safe_load(_run([rlhf, "--cfg", "job"], cwd=elsewhere, env=env).stdout)
    assert {"stage", "model", "data", "deepspeed", "run"} <= set(composed)
    assert composed["stage"]["name"] == "prepare" and composed["data"]["format"] == "toy"
    assert not (elsewhere / "runs").exists()

    out = _run([rlhf, "stage=prepare"], cwd=elsewhere, env=env)
    assert "data: toy" in out.stdout and "response tokens" in out.stdout, out.stdout
    assert all(f"{split} example" in out.stdout for split in ("sft", "rm", "ppo", "eval")), out.stdout
    manifest = json.loads((elsewhere / "runs" / "default" / "prepare" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert set(manifest["data"]["splits"]) == {"sft", "rm", "ppo", "eval"}
    assert all(s["prompts"] > 0 for s in manifest["data"]["splits"].values())
