"""The registries: a stage added to the stage registry is picked up by the pipeline, lineage,
config checks and `--list-stages` (an advantage estimator or reward source added from outside:
test_extending.py); stage names, algorithm names and model files stay in their one place; no
module imports from a layer above its own; functions and modules stay short."""

import ast
import json

import pytest
import yaml
from omegaconf import OmegaConf

from rlhf import lineage, stages
from rlhf.algos.advantages import ADVANTAGES
from rlhf.checks import check, register_schemas
from rlhf.config import ConfigError, GenerateConfig, LoggerBackend, LoggerConfig, PPOStageConfig, RLHFConfig, StageConfig
from rlhf.pipeline import run_stages
from tests.conftest import ROOT

# ---- the stage registry ----

CALLS: list[str] = []


def run(cfg, stage_run):
    """The entry of the dummy stages below (`module` = this test module)."""
    CALLS.append(cfg.stage.name)
    out = stages.output_path(cfg, cfg.stage.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    upstream = stages.resolve_inputs(cfg, cfg.stage.name)
    out.write_text(f"{cfg.stage.name} from {sorted(upstream.values())} seed {cfg.seed}\n")


@pytest.fixture
def dummy_stages(monkeypatch):
    """alpha writes out.txt; beta reads alpha's out.txt through an input (generate.policy)."""
    monkeypatch.setitem(stages.STAGES, "alpha", stages.Stage("alpha", __name__, "dummy", "prepare",
                                                             output="out.txt", in_pipeline=True))
    monkeypatch.setitem(stages.STAGES, "beta", stages.Stage(
        "beta", __name__, "dummy", "generate", inputs=(stages.Input("policy", produced_by="alpha"),),
        output="out.txt", in_pipeline=True))
    CALLS.clear()


def test_a_registered_stage_joins_the_pipeline_lineage_checks_and_listing(dummy_stages, tmp_path):
    from rlhf.cli import list_stages

    assert stages.pipeline_stages()[-2:] == ["alpha", "beta"]
    assert list_stages("pipeline").split()[-2:] == ["alpha", "beta"]
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r", stage=StageConfig("pipeline"), stages=["alpha", "beta"],
                     logger=LoggerConfig(backend=LoggerBackend.none))
    check(cfg)  # alpha and beta are valid pipeline stages, in registry order
    with pytest.raises(ConfigError, match=r"stages=\['beta', 'alpha'\]"):
        check(RLHFConfig(stage=StageConfig("pipeline"), stages=["beta", "alpha"]))
    # beta's default input is alpha's output; asked for before alpha ran, the error says what to run
    with pytest.raises(ConfigError, match="run `rlhf stage=alpha run=r` first"):
        stages.resolve_inputs(cfg, "beta")
    assert lineage.upstream(cfg, "beta") == {"policy": str(tmp_path / "r" / "alpha" / "out.txt")}

    composed = OmegaConf.structured(cfg)
    run_stages(cfg, composed)
    assert CALLS == ["alpha", "beta"]
    beta = json.loads((tmp_path / "r" / "beta" / "manifest.json").read_text())
    alpha = json.loads((tmp_path / "r" / "alpha" / "manifest.json").read_text())
    assert beta["status"] == "completed"
    assert beta["lineage"]["policy"]["content"] == alpha["outputs"]["sha256"]  # read by content hash
    run_stages(cfg, composed)
    assert CALLS == ["alpha", "beta"]  # both up to date: skipped
    changed = RLHFConfig(**{**cfg.__dict__, "seed": 1})
    run_stages(changed, OmegaConf.structured(changed))
    assert CALLS == ["alpha", "beta"] * 2  # a changed setting reruns alpha, and through its hash, beta


def test_stage_options_and_registry_name_the_same_stages():
    """`stage=<name>` options are made from the registry, so no file can name a stage it lacks."""
    from hydra.core.config_store import ConfigStore

    register_schemas()
    options = {name.removesuffix(".yaml") for name in ConfigStore.instance().list("stage")}
    # (<=: the store is global, and keeps the stages other tests registered for a while)
    assert {*stages.STAGES, stages.CHAIN} <= options and not (ROOT / "conf" / "stage").exists()
    for name in (*stages.STAGES, stages.CHAIN):
        assert ConfigStore.instance().load(f"stage/{name}.yaml").node == {"name": name}
    for stage in stages.STAGES.values():  # every input's field exists in its stage's section
        for item in stage.inputs:
            assert hasattr(getattr(RLHFConfig(), stage.section), item.field), (stage.name, item.field)


def test_compare_and_generate_defaults_come_from_the_registry(tmp_path):
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r", generate=GenerateConfig())
    with pytest.raises(ConfigError, match="rlhf stage=sft run=r"):
        stages.compare_policies(cfg)
    with pytest.raises(ConfigError, match="generate.policy is null"):
        stages.latest_policy(cfg)
    for name in ("sft", "dpo"):  # a run without a reward model: no bon:4, and compare reads no RM
        stages.output_path(cfg, name).mkdir(parents=True)
    assert stages.compare_policies(cfg) == {"sft": str(tmp_path / "r/sft/final"), "dpo": str(tmp_path / "r/dpo/final")}
    assert "reward_from" not in stages.resolve_inputs(cfg, "compare")
    for name in ("rm", "ppo", "bon_sft"):
        stages.output_path(cfg, name).mkdir(parents=True)
    assert stages.compare_policies(cfg) == {
        "sft": str(tmp_path / "r/sft/final"), "ppo": str(tmp_path / "r/ppo/final"),
        "dpo": str(tmp_path / "r/dpo/final"), "bon_sft": str(tmp_path / "r/bon_sft/final"), "bon:4": "bon:4"}
    assert stages.resolve_inputs(cfg, "compare")["reward_from"] == str(tmp_path / "r/rm/final")
    assert stages.latest_policy(cfg) == str(tmp_path / "r/bon_sft/final")
    assert stages.resolve_inputs(cfg, "compare", require=False)["bon_from"] == str(tmp_path / "r/sft/final")


def test_the_offline_stage_3_stages_join_the_pipeline_only_when_named(tmp_path):
    from rlhf.cli import list_stages

    assert stages.pipeline_stages() == ["sft", "rm", "ppo", "compare"]
    assert stages.pipeline_stages(optional=True) == ["sft", "collect", "rm", "ppo", "dpo", "bon_sft", "compare"]
    # collect runs by default from round 2 (the previous round's policy), in round 1 when named
    assert stages.pipeline_stages(round=2) == ["collect", "rm", "ppo", "compare"]
    assert stages.pipeline_stages(optional=True, round=2) == ["collect", "rm", "ppo", "dpo", "bon_sft", "compare"]
    check(RLHFConfig(stage=StageConfig("pipeline"), stages=["sft", "collect", "rm", "compare"]))
    assert "dpo" not in list_stages("pipeline").split()
    assert "dpo" in list_stages("all") and "only when named in stages=" in list_stages("all")
    check(RLHFConfig(stage=StageConfig("pipeline"), stages=["sft", "dpo", "compare"]))
    with pytest.raises(ConfigError, match=r"stages=\['dpo', 'sft'\]"):
        check(RLHFConfig(stage=StageConfig("pipeline"), stages=["dpo", "sft"]))
    # dpo reads the SFT policy; bon_sft the SFT policy and, with reward=model only, the RM
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r")
    assert stages.resolve_inputs(cfg, "dpo", require=False) == {"init_from": str(tmp_path / "r/sft/final")}
    assert set(stages.resolve_inputs(cfg, "bon_sft", require=False)) == {"init_from", "reward_from"}
    cfg.reward.source, cfg.reward.function = "function", "rlhf.data.toy:gold_score"
    assert set(stages.resolve_inputs(cfg, "bon_sft", require=False)) == {"init_from"}


# ---- the algorithm registries ----

def test_an_unknown_algorithm_name_lists_the_registered_ones():
    cfg = RLHFConfig(ppo=PPOStageConfig(advantage="nope", policy_loss="nah", kl_estimator="k9"))
    with pytest.raises(ConfigError) as err:
        check(cfg)
    message = str(err.value)
    assert f"ppo.advantage='nope': choose one of {', '.join(ADVANTAGES.names())}" in message
    assert "ppo.policy_loss='nah': choose one of gspo, ppo_clip" in message
    assert "ppo.kl_estimator='k9': choose one of k1, k3" in message


# ---- one place for each thing ----

def _not_model_fields(path) -> set[str]:
    """A model file's top-level keys other than `model:` (a stage's or an algorithm's settings)."""
    return set(yaml.safe_load(path.read_text()) or {}) - {"model"}


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_files_hold_model_fields_only(path):
    """Picking a model must not change a stage's settings (learning rates, batch sizes, beta,
    update counts): those tuned for a model on a data set live in that pair's recipe
    (conf/recipe/<data>_<model>.yaml) or an experiment, an algorithm's in conf/algo/."""
    assert not _not_model_fields(path)


def test_a_model_file_with_a_stage_setting_is_refused(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("# @package _global_\nmodel:\n  name_or_path: x\nsft:\n  learning_rate: 1\n")
    assert _not_model_fields(path) == {"sft"}


# Which packages each package may import besides itself: a DAG, not a total order, so that
# packages side by side (config and algos, data and models) stay apart too. core is the floor;
# the entry layer (the command lines, the config checks, which read every registry, the
# pipeline and lineage) may import anything.
ENTRY = ("rlhf.checks", "rlhf.cli", "rlhf.rank", "rlhf.pipeline", "rlhf.lineage")
MAY_IMPORT = {
    "rlhf.core": set(),
    "rlhf.algos": {"rlhf.core"},
    "rlhf.config": {"rlhf.core"},
    "rlhf.data": {"rlhf.core", "rlhf.config"},
    "rlhf.models": {"rlhf.core", "rlhf.config"},
    "rlhf.sampling": {"rlhf.core", "rlhf.config", "rlhf.data", "rlhf.models", "rlhf.algos"},
    "rlhf.stages": {"rlhf.core", "rlhf.config", "rlhf.data", "rlhf.models", "rlhf.algos", "rlhf.sampling"},
}
MAY_IMPORT.update({entry: {*MAY_IMPORT, *ENTRY} for entry in ENTRY})


def _package(module: str) -> str:
    """The key of MAY_IMPORT that a module belongs to: rlhf.stages.online_rl.loop -> rlhf.stages."""
    found = [p for p in MAY_IMPORT if module == p or module.startswith(p + ".")]
    assert found, f"{module} is in no package of MAY_IMPORT"
    return found[0]


def _may_import(module: str, target: str) -> bool:
    return _package(target) in {_package(module), *MAY_IMPORT[_package(module)]}


def test_no_module_imports_from_a_layer_above_it():
    package = ROOT / "rlhf"
    wrong = []
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):  # every import, those inside functions too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf"):
                targets = [node.module] if node.module != "rlhf" else [f"rlhf.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("rlhf")]
            else:
                continue
            for target in targets:
                if not _may_import(module, target):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, wrong
    # the rule has teeth: the imports that once ran up a layer would be refused
    for module, target in [("rlhf.core.runlock", "rlhf.config"), ("rlhf.core.tracking", "rlhf.config"),
                           ("rlhf.algos.registry", "rlhf.config"), ("rlhf.config.schema", "rlhf.stages"),
                           ("rlhf.config.check", "rlhf.algos.advantages"), ("rlhf.config.check", "rlhf.sampling.reward"),
                           ("rlhf.config.check", "rlhf.data.toy"), ("rlhf.sampling.generate", "rlhf.stages.online_rl.loop"),
                           ("rlhf.models.loading", "rlhf.data"), ("rlhf.stages.sft", "rlhf.checks")]:
        assert not _may_import(module, target), f"{module} -> {target}"


def test_no_function_over_80_lines_and_no_module_over_400():
    """Small enough to read top to bottom: a longer function or module is split where it reads
    naturally (print the longest with `python -c` over this walk when one grows)."""
    long_functions, long_modules = [], []
    for path in (ROOT / "rlhf").rglob("*.py"):
        source = path.read_text()
        if len(source.splitlines()) > 400:
            long_modules.append(str(path.relative_to(ROOT)))
        long_functions += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}" for node in ast.walk(ast.parse(source))
                           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and node.end_lineno - node.lineno + 1 > 80]
    assert not long_functions and not long_modules, (long_functions, long_modules)


def test_default_paths_are_written_once():
    """A stage's default inputs (runs/<run>/<stage>/...) are built by the registry only."""
    import re

    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "rlhf").rglob("*.py")
                 if p != ROOT / "rlhf" / "stages" / "__init__.py" and re.search(r'run_dir\s*/\s*"', p.read_text())]
    assert not offenders, offenders
