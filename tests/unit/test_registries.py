"""The registries: a stage added to the stage registry is picked up by the pipeline, lineage,
config checks and `--list-stages`; an advantage estimator registered from outside runs through
the real stage-3 loop without a critic; stage names, algorithm names and model files stay in
their one place; no module imports from a layer above its own."""

import ast
import json

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from rlhf import lineage, stages
from rlhf.algos.advantages import ADVANTAGES, register_advantage
from rlhf.config import (ConfigError, DataConfig, GenerateConfig, LoggerBackend, LoggerConfig, ModelConfig,
                         PPOStageConfig, RLHFConfig, StageConfig, ToyConfig)
from rlhf.config.check import check
from rlhf.core.artifacts import StageRun, save_final
from rlhf.models import build_tiny_model, load_tokenizer
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


def test_stage_configs_and_registry_name_the_same_stages():
    files = {f.stem for f in (ROOT / "conf" / "stage").glob("*.yaml")}
    assert files == {*stages.STAGES, stages.CHAIN}
    for name in files:
        assert yaml.safe_load((ROOT / "conf" / "stage" / f"{name}.yaml").read_text()) == {"name": name}
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
    assert stages.pipeline_stages(optional=True) == ["sft", "rm", "ppo", "dpo", "bon_sft", "compare"]
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


@pytest.fixture
def sign_estimator(monkeypatch):
    """A critic-free estimator registered from outside the package: each response's advantage
    is the sign of its score against its group's mean, on every token."""
    monkeypatch.setattr(ADVANTAGES, "_entries", dict(ADVANTAGES._entries))  # registered for this test only
    seen = []

    @register_advantage("test_group_sign", needs_critic=False)
    def group_sign(x, cfg):
        seen.append(x)
        sums = torch.zeros(int(x.groups.max()) + 1).index_add(0, x.groups, x.scores)
        counts = torch.zeros_like(sums).index_add(0, x.groups, torch.ones_like(x.scores))
        return torch.sign(x.scores - (sums / counts)[x.groups])[:, None] * x.mask, None

    return seen


def test_a_registered_estimator_runs_through_the_real_loop_without_a_critic(sign_estimator, tmp_path):
    from rlhf.stages.online_rl import loop

    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    policy = build_tiny_model(ModelConfig(), tokenizer)
    save_final(policy, tokenizer, tmp_path / "policy")
    policy.config.num_labels = 1
    reward = AutoModelForSequenceClassification.from_config(policy.config)
    save_final(reward, tokenizer, tmp_path / "reward")
    cfg = RLHFConfig(
        runs_dir=str(tmp_path), run="r", stage=StageConfig("ppo"), logger=LoggerConfig(backend=LoggerBackend.none),
        data=DataConfig(toy=ToyConfig(num_prompts=300), max_prompt_tokens=16, max_response_tokens=12),
        ppo=PPOStageConfig(advantage="test_group_sign", policy_from=str(tmp_path / "policy"),
                           reward_from=str(tmp_path / "reward"), updates=1, rollout_batch_size=8,
                           samples_per_prompt=4, mini_batch_size=8, ppo_epochs=1, learning_rate=1e-2,
                           eval_prompts=4, save_every_updates=0))
    check(cfg)
    with StageRun(cfg.stage_dir, OmegaConf.structured(cfg)) as stage_run:
        loop.run(cfg, stage_run)

    (x,) = sign_estimator  # called once, with four responses per prompt and no values
    assert x.values is None and x.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    manifest = json.loads((cfg.stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and set(manifest["distributed"]) == {"policy", "ref", "reward"}
    stats = manifest["metrics"]["last_update"]
    assert "policy_loss" in stats and "value_loss" not in stats and "explained_variance" not in stats
    checkpoint = cfg.stage_dir / "checkpoints" / "update_1"
    assert (checkpoint / "policy").is_dir() and not (checkpoint / "value").exists()
    from safetensors.torch import load_file

    after = load_file(cfg.stage_dir / "final" / "model.safetensors")
    before = load_file(tmp_path / "policy" / "model.safetensors")
    assert any(not torch.equal(after[k], before[k]) for k in before), "the policy did not change"


# ---- one place for each thing ----

MODEL_SIZE_KEYS = {"model", "sft.learning_rate", "sft.per_device_batch_size", "sft.gradient_accumulation_steps",
                   "sft.epochs", "rm.learning_rate", "rm.per_device_batch_size", "rm.gradient_accumulation_steps",
                   "rm.epochs", "ppo.learning_rate", "ppo.value_learning_rate", "ppo.rollout_batch_size",
                   "ppo.mini_batch_size", "ppo.micro_batch_size", "dpo.learning_rate", "dpo.per_device_batch_size",
                   "bon_sft.learning_rate", "bon_sft.per_device_batch_size"}


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_files_hold_model_size_settings_only(path):
    """Picking a model must not change an algorithm (beta, update counts, warm-ups): those live
    in conf/algo/, conf/recipe/ and experiments."""
    settings = yaml.safe_load(path.read_text())
    keys = {k if k == "model" else f"{k}.{sub}" for k, v in settings.items() for sub in (v if k != "model" else [0])}
    assert keys <= MODEL_SIZE_KEYS, keys - MODEL_SIZE_KEYS


# Each layer may import its own and the ones below; rlhf.config.check (the entry's validation,
# which reads every registry), the entry points (cli, rank), pipeline and lineage sit on top.
LAYERS = [("rlhf.config.schema", "rlhf.config"), ("rlhf.core",), ("rlhf.data", "rlhf.models", "rlhf.algos"),
          ("rlhf.sampling",), ("rlhf.stages",),
          ("rlhf.config.check", "rlhf.cli", "rlhf.rank", "rlhf.pipeline", "rlhf.lineage")]


def _layer(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer): the longest matching prefix decides
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), level)
    assert best[1] >= 0, f"{module} is in no layer of LAYERS"
    return best[1]


def test_no_module_imports_from_a_layer_above_it():
    package = ROOT / "rlhf"
    wrong = []
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf"):
                targets = [node.module] if node.module != "rlhf" else [f"rlhf.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("rlhf")]
            else:
                continue
            for target in targets:
                if _layer(target) > _layer(module):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, wrong
    assert _layer("rlhf.sampling.generate") < _layer("rlhf.stages.online_rl.loop")  # the rule has teeth


def test_default_paths_are_written_once():
    """A stage's default inputs (runs/<run>/<stage>/...) are built by the registry only."""
    import re

    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "rlhf").rglob("*.py")
                 if p != ROOT / "rlhf" / "stages" / "__init__.py" and re.search(r'run_dir\s*/\s*"', p.read_text())]
    assert not offenders, offenders
