"""Variants (a sweep's points): each writes runs/<run>/<stage>@<variant>, reads the run's earlier
stages unless it ran them itself, takes its own lock, and compare finds every point."""

import pytest

from rlhf import lineage, stages
from rlhf.config import ConfigError, RLHFConfig, StageConfig
from rlhf.checks import check


def finished(folder):
    (folder / "final").mkdir(parents=True)
    return folder / "final"


def test_a_variant_writes_its_own_folder_and_reads_the_runs_earlier_stages(tmp_path):
    sft = finished(tmp_path / "r" / "sft")
    finished(tmp_path / "r" / "rm")
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r", variant="algo=grpo,seed=1", stage=StageConfig("ppo"))
    assert cfg.stage_dir == tmp_path / "r" / "ppo@algo=grpo,seed=1"
    assert stages.resolve_inputs(cfg, "ppo")["policy_from"] == str(sft)
    # a variant that ran its own sft (a swept pipeline) reads that one
    own = finished(tmp_path / "r" / "sft@algo=grpo,seed=1")
    assert stages.resolve_inputs(cfg, "ppo")["policy_from"] == str(own)
    (tmp_path / "r" / "ppo").mkdir()
    (tmp_path / "r" / "ppo" / "manifest.json").write_text('{"status": "completed"}')
    assert lineage.recorded(cfg, "ppo") == {}  # its own manifest, not the run's ppo's
    plain = RLHFConfig(runs_dir=str(tmp_path), run="r", stage=StageConfig("ppo"))
    assert plain.stage_dir == tmp_path / "r" / "ppo"


def test_compare_sets_every_point_of_a_sweep_beside_the_runs_policies(tmp_path):
    for name in ("sft", "ppo", "ppo@algo=grpo", "ppo@algo=rloo", "dpo@dpo.beta=0.5"):
        finished(tmp_path / "r" / name)
    (tmp_path / "r" / "ppo@algo=ppo,seed=9").mkdir()  # still running: no final/
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r", stage=StageConfig("compare"))
    policies = stages.compare_policies(cfg)
    assert list(policies) == ["sft", "ppo", "ppo@algo=grpo", "ppo@algo=rloo", "dpo@dpo.beta=0.5"]
    assert policies["ppo@algo=grpo"] == str(tmp_path / "r" / "ppo@algo=grpo" / "final")


def test_a_variant_must_name_a_folder():
    for bad in ("a/b", " ", ""):
        with pytest.raises(ConfigError, match="variant=.*non-empty and hold no '/'"):
            check(RLHFConfig(variant=bad))
    check(RLHFConfig(variant="algo=grpo,seed=1"))


def test_a_variant_takes_its_own_lock(tmp_path):
    from rlhf.core.runlock import run_lock

    with run_lock(tmp_path / "r"):
        with run_lock(tmp_path / "r", "seed=1"):  # a point of a sweep beside the run's own command
            assert (tmp_path / "r" / ".lock@seed=1").exists()
        with pytest.raises(ConfigError, match="in use"):
            with run_lock(tmp_path / "r"):
                pass


def test_a_stage_records_its_own_peak_memory_not_the_process_one(tmp_path):
    """A multirun's points (and a pipeline's stages) share a process: each manifest holds the
    peak of its own stage. In a fresh process: this one's memory after hundreds of tests (freed
    pages the allocator keeps) would decide whether 400 MB more shows."""
    import json
    import subprocess
    import sys

    code = """if True:
        import sys
        from pathlib import Path
        from omegaconf import OmegaConf
        from rlhf.core.artifacts import StageRun

        root = Path(sys.argv[1])
        with StageRun(root / "a", OmegaConf.create({})):
            big = bytearray(400 * 2**20)
            big[::4096] = b"x" * len(big[::4096])  # touch every page
            del big
        with StageRun(root / "b", OmegaConf.create({})):
            pass
    """
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    peaks = [json.loads((tmp_path / s / "manifest.json").read_text())["peak_rss_mb"] for s in "ab"]
    assert peaks[0] > peaks[1] + 300, peaks


def _stage_folder(cfg, settings):
    """A ppo folder as a run with `settings` leaves it: config.yaml, manifest, a checkpoint."""
    from omegaconf import OmegaConf

    folder = cfg.stage_dir
    (folder / "checkpoints" / "update_40").mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(settings)))
    (folder / "manifest.json").write_text(
        '{"status": "completed", "fingerprint": "%s", "lineage": %s}' % (
            lineage.fingerprint(settings, "ppo")["sha256"],
            __import__("json").dumps(lineage.fingerprint(settings, "ppo")["inputs"])))


def test_one_stage_does_not_resume_checkpoints_written_with_other_settings(tmp_path):
    """`rlhf stage=ppo reward=ensemble` in a folder whose checkpoints were trained against one
    RM would make a policy of two runs: it stops and names what differs; more updates extend."""
    from omegaconf import OmegaConf

    from rlhf.config import RewardConfig
    from rlhf.pipeline import _refuse_to_mix

    finished(tmp_path / "r" / "sft")
    finished(tmp_path / "r" / "rm")
    before = RLHFConfig(runs_dir=str(tmp_path), run="r", variant="seed=1", stage=StageConfig("ppo"))
    _stage_folder(before, before)
    longer = RLHFConfig(runs_dir=str(tmp_path), run="r", variant="seed=1", stage=StageConfig("ppo"))
    longer.ppo.updates = 60
    _refuse_to_mix(longer, "ppo", lineage.fingerprint(longer, "ppo")["sha256"], OmegaConf.structured(longer))
    other = RLHFConfig(runs_dir=str(tmp_path), run="r", variant="seed=1", stage=StageConfig("ppo"),
                       reward=RewardConfig(source="ensemble", members=["a", "b"]))
    with pytest.raises(ConfigError, match=r"ppo@seed=1 has checkpoints of ppo with other settings "
                                          r"\(reward.members: \[\] -> \['a', 'b'\]; reward.source: model -> "
                                          r"ensemble.*which this command would resume.*variant=<name>"):
        _refuse_to_mix(other, "ppo", lineage.fingerprint(other, "ppo")["sha256"], OmegaConf.structured(other))
