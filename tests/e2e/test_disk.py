"""A run folder on a full disk or a read-only one: exit 2 with one line naming the folder and
what is wrong, no traceback, and no half-written final/ left behind. Each case mounts a small
tmpfs as the run folder (root only; CI runs as root)."""

import os
import subprocess
from contextlib import contextmanager

import pytest

pytestmark = pytest.mark.slow

SFT = ["stage=sft", "data.toy.num_prompts=300", "sft.max_steps=2", "sft.gold_eval_prompts=0", "logger=none"]


@contextmanager
def mounted(folder, options):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root, which these tests need (mount)")
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def one_error_line(out) -> str:
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("options,what", [("size=1m,ro", "a read-only file system"),
                                          ("size=1m", "no space left on the device")])
def test_a_disk_that_refuses_the_run_is_one_line_and_exit_2(tmp_path, run_cli, options, what):
    with mounted(tmp_path / "runs", options) as runs:
        out = run_cli(*SFT, cwd=tmp_path, expect=2)
        line = one_error_line(out)
        assert "cannot write runs/default" in line and what in line, line
        stage = runs / "default" / "sft"
        assert not (stage / "final").exists() and not (stage / "final.tmp").exists()
        assert not list(runs.rglob(".*.tmp"))  # no temporary file of an atomic write left
