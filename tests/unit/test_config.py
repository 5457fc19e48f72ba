"""Every file in conf/ composes and validates; bad configs fail naming the fields involved."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from tests.conftest import ROOT
from rlhf import stages
from rlhf.config import ConfigError, RLHFConfig
from rlhf.checks import check, register_schemas, to_config

CONF = ROOT / "conf"
# Options that need a value the file leaves for the user to give.
NEEDS = {("data", "jsonl"): ["data.path=data/examples/pairwise.jsonl"],
         ("data", "mt_bench"): ["data.path=data/examples/questions.jsonl"],
         ("data", "ifeval"): ["data.path=data/examples/ifeval.jsonl"],
         ("reward", "function"): ["reward.function=rlhf.data.toy:gold_score"],
         ("reward", "verifier"): ["data=ifeval", "data.path=data/examples/ifeval.jsonl"]}

register_schemas()


def load(overrides: list[str]) -> RLHFConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = to_config(compose(config_name="config", overrides=overrides))
    check(cfg)
    return cfg


# stage=<name> has no file: register_schemas() makes one option per entry of the stage registry
OPTIONS = sorted([*((group.name, f.stem) for group in CONF.iterdir() if group.is_dir() for f in group.glob("*.yaml")),
                  *(("stage", name) for name in (*stages.STAGES, stages.CHAIN))])


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} >= {"stage", "model", "data", "deepspeed", "experiment"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_conf_file_composes_and_validates(group, option):
    cfg = load([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert isinstance(cfg, RLHFConfig)
    if group in ("stage", "deepspeed"):
        assert getattr(cfg, group).name == option


def test_default_config_is_the_toy_task_on_the_tiny_model():
    cfg = load([])
    assert (cfg.stage.name, cfg.model.name_or_path, cfg.data.format.value) == ("prepare", None, "toy")
    assert cfg.stage_dir == Path("runs/default/prepare")
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("override,named", [
    ("data.nope=1", "nope"),                      # unknown key
    ("data.splits.sft=abc", "data.splits.sft"),   # wrong type
    ("data.on_error=ignore", "on_error"),         # not one of the enum's values
    ("data.format=xml", "format"),
])
def test_unknown_keys_and_wrong_types_fail_at_composition(override, named):
    with pytest.raises(ConfigCompositionException) as err:
        load([override])
    assert named in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("overrides,fields", [
    (["data.splits.sft=0.9"], ["data.splits", "more than 1"]),
    (["data.path=x.jsonl"], ["data.format=toy", "data.path"]),
    (["data=hh_rlhf", "data.hub_id=null"], ["data.path", "data.hub_id"]),
    (["data.splits.shared=[sft,rm]"], ["data.splits.sft=0.4", "data.splits.rm=0.3"]),
    (["data.splits.shared=[sft,train]"], ["train"]),
    (["model.tiny.hidden_size=130"], ["model.tiny.hidden_size", "model.tiny.num_attention_heads"]),
    (["data.max_prompt_tokens=4000"], ["data.max_prompt_tokens", "model.tiny.max_position_embeddings"]),
    (["run=a/b"], ["run="]),
    (["stage.name=train"], ["stage.name", "prepare"]),
    (["data.toy.min_items=5", "data.toy.max_items=3"], ["data.toy.min_items", "data.toy.max_items"]),
    (["deepspeed=zero3", "model.lora.enabled=true"], ["model.lora.enabled", "ZeRO-3", "deepspeed=zero2"]),
    (["deepspeed=zero3", "ppo.ema_decay=0.9"], ["ppo.ema_decay", "ZeRO-3"]),
    (["deepspeed=zero2", "deepspeed.config.zero_optimization.stage=5"], ["zero_optimization.stage=5"]),
    (["evaluate.split=train", "evaluate.policies={a: runs/a/sft/final}", "evaluate.baseline=b"],
     ["evaluate.split='train'", "evaluate.baseline='b'"]),
    (["ppo.rollout_engine=sglang"], ["ppo.rollout_engine='sglang'", "hf, vllm"]),
    (["ppo.tis_cap=2"], ["ppo.tis_cap=2", "ppo.rollout_engine=vllm"]),
    (["vllm.gpu_memory_utilization=1.5", "vllm.sleep_level=3", "vllm.kv_cache_mib=0"],
     ["vllm.gpu_memory_utilization=1.5", "vllm.sleep_level=3", "vllm.kv_cache_mib=0"]),
])
def test_inconsistent_fields_are_one_error_naming_them(overrides, fields):
    with pytest.raises(ConfigError) as err:
        load(overrides)
    for f in fields:
        assert f in str(err.value)


def test_keys_added_with_plus_are_refused_too():
    # Hydra lets `+key=value` into a structured node; a typo must not pass silently.
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): model.flash, data.toy.colour"):
        load(["+model.flash=true", "+data.toy.colour=red"])


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load(["data.splits.sft=0.9", "model.tiny.hidden_size=130"])
    assert str(err.value).count("\n  - ") == 2


def test_experiment_overrides_stack_on_groups():
    cfg = load(["experiment=toy_small"])
    assert (cfg.run, cfg.data.toy.num_prompts) == ("toy_small", 1000)


def test_compare_policies_take_a_dict_from_the_command_line_and_bad_entries_are_named():
    cfg = load(["stage=compare", 'compare.policies={sft: runs/a/sft/final, ppo_b: runs/b/ppo/final, bon8: "bon:8"}'])
    assert cfg.compare.policies == {"sft": "runs/a/sft/final", "ppo_b": "runs/b/ppo/final", "bon8": "bon:8"}
    with pytest.raises(ConfigError) as e:
        load(["stage=compare", 'compare.policies={ppo: runs/b/ppo/final, best: "bon:x"}', "compare.modes=[sampled,beam]"])
    message = str(e.value)
    for field in ("compare.policies.best='bon:x'", "compare.baseline='sft'", "compare.modes"):
        assert field in message


def test_lora_needs_a_positive_rank_when_enabled():
    assert load(["model.lora.r=0"]).model.lora.r == 0  # off: not checked
    with pytest.raises(ConfigError, match="model.lora.r=0"):
        load(["model.lora.enabled=true", "model.lora.r=0"])


@pytest.mark.parametrize("name,fixture,kind", [("hh_rlhf", "hh_rlhf.jsonl", "comparisons"),
                                               ("oasst1", "oasst.jsonl", "comparisons"),
                                               ("ultrafeedback", "ultrafeedback.jsonl", "comparisons"),
                                               ("tldr", "tldr.jsonl", "demonstrations")])
def test_public_dataset_configs_map_a_local_copy_in_their_format(name, fixture, kind, tokenizer):
    """Each hub dataset's config (format, field names) on a small file in its real format."""
    from tests.conftest import EXAMPLES, every_split
    from rlhf.data import load_data

    cfg = load([f"data={name}", f"data.path={EXAMPLES / fixture}"]).data
    cfg.splits = every_split()
    bundle = load_data(cfg, tokenizer)
    assert getattr(bundle.splits["sft"], kind) and bundle.skips.total == 0
    if kind == "comparisons":  # these configs also train SFT on each comparison's best answer
        assert bundle.splits["sft"].demonstrations


@pytest.mark.parametrize("experiment,ranks", [("qwen2_5_1_5b_hh_zero2", 8), ("llama3_1_8b_hh_zero3", 16)])
def test_cluster_experiments_batch_sizes_divide_across_their_ranks(experiment, ranks, monkeypatch):
    from rlhf.stages.online_rl.loop import check_batch_sizes

    cfg = load([f"experiment={experiment}"])
    assert cfg.deepspeed.name in ("zero2", "zero3") and cfg.model.name_or_path and cfg.data.format.value == "hh_rlhf"
    monkeypatch.setenv("WORLD_SIZE", str(ranks))
    check_batch_sizes(cfg.ppo)  # raises ConfigError naming the sizes otherwise
    monkeypatch.setenv("WORLD_SIZE", str(ranks * 3))
    with pytest.raises(ConfigError, match="ppo.rollout_batch_size"):
        check_batch_sizes(cfg.ppo)


def test_slurm_launcher_config_composes_with_the_submitit_plugin():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        composed = compose(config_name="config", overrides=["hydra/launcher=slurm", "stage=ppo"], return_hydra_config=True)
    launcher = composed.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.signal_delay_s == 300


def test_the_vllm_engine_without_vllm_installed_is_refused_before_a_pipeline_starts(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    for stage in ("ppo", "pipeline"):
        with pytest.raises(ConfigError, match=r"ppo.rollout_engine=vllm needs vLLM.*make setup-vllm"):
            load([f"stage={stage}", "ppo.rollout_engine=vllm"])
    load(["stage=sft", "ppo.rollout_engine=vllm"])  # a stage that samples no rollout does not need it
