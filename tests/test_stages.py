"""SFT then RM end to end on a small toy run, as `rlhf stage=sft` / `rlhf stage=rm` run them."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import ModelConfig
from rlhf.models import build_tiny_model, build_tiny_tokenizer

pytestmark = pytest.mark.slow

SMALL = ["run=small", "data.toy.num_prompts=3000", "logger.every_steps=5"]


def rlhf(cwd, *args):
    out = subprocess.run([sys.executable, "-m", "rlhf.cli", *SMALL, *args], cwd=cwd, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    rlhf(root, "stage=sft", "sft.epochs=6", "sft.gold_eval_prompts=64", "sft.save_every_steps=50")
    rlhf(root, "stage=rm", "rm.epochs=2", "rm.eval_every_steps=20")
    rlhf(root, "stage=ppo", *PPO, "ppo.updates=6")
    return root / "runs" / "small"


PPO = ["ppo.rollout_batch_size=32", "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.eval_prompts=32",
       "ppo.eval_every_updates=3", "ppo.save_every_updates=3", "ppo.learning_rate=1e-4"]


def manifest(runs, stage):
    return json.loads((runs / stage / "manifest.json").read_text())


def test_sft_loss_falls_and_every_parameter_changes(runs):
    m = manifest(runs, "sft")
    assert m["status"] == "completed"
    assert m["metrics"]["train_loss_last"] < 0.5 * m["metrics"]["train_loss_first"]
    assert m["metrics"]["eval_loss"] < m["metrics"]["train_loss_first"]
    before = build_tiny_model(ModelConfig(), build_tiny_tokenizer()).state_dict()
    after = load_file(runs / "sft" / "final" / "model.safetensors")
    assert set(after) <= set(before)
    unchanged = [name for name, tensor in after.items() if torch.equal(tensor, before[name])]
    assert not unchanged


def test_sft_reports_gold_scores_of_greedy_and_sampled_answers(runs):
    metrics = manifest(runs, "sft")["metrics"]
    for mode in ("greedy", "sampled"):
        assert 0.0 <= metrics[f"gold_{mode}_perfect"] <= 1.0
        assert 0.5 < metrics[f"gold_{mode}_mean"] <= 1.0  # far above an untrained model's ~0
    assert (runs / "sft" / "checkpoints").is_dir()


def test_rm_accuracy_rises_above_chance(runs):
    metrics = manifest(runs, "rm")["metrics"]
    assert metrics["eval_accuracy"] > 0.65
    assert metrics["gold_accuracy"] > 0.65
    assert metrics["eval_accuracy_k4"] == metrics["eval_accuracy"]  # all toy comparisons are K = 4
    assert metrics["eval_score_best_mean"] > metrics["eval_score_worst_mean"]
    assert metrics["train_loss_last"] < metrics["train_loss_first"]


def test_final_models_load_with_plain_transformers_in_a_fresh_process(runs):
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from rlhf.data import encode, load_data
from rlhf.config import DataConfig, ToyConfig
from rlhf.generation import score
policy = AutoModelForCausalLM.from_pretrained({str(runs / 'sft' / 'final')!r})
rm = AutoModelForSequenceClassification.from_pretrained({str(runs / 'rm' / 'final')!r})
tok = AutoTokenizer.from_pretrained({str(runs / 'rm' / 'final')!r})
assert tok.pad_token_id != tok.eos_token_id and rm.config.pad_token_id == tok.pad_token_id
data = load_data(DataConfig(toy=ToyConfig(num_prompts=3000), max_prompt_tokens=16, max_response_tokens=16), tok)
demos = data.splits["sft"].demonstrations
scores = score(rm, tok, [d.prompt for d in demos], [d.response for d in demos])
prompt_ids, response_ids = encode(tok, demos[0].prompt, demos[0].response)
ids, labels = torch.tensor([prompt_ids + response_ids]), torch.tensor([[-100] * len(prompt_ids) + response_ids])
print(json.dumps({{"demo_mean": scores.mean().item(), "loss": policy(ids, labels=labels).loss.item(),
                  "norm": rm.config.rlhf_reward_normalization}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Normalisation: the sft split's demonstrations score mean 0 once the saved bias is applied.
    assert abs(result["demo_mean"]) < 0.05
    assert result["norm"]["raw_std"] > 0 and result["norm"]["bias"] == -result["norm"]["raw_mean"]
    assert result["loss"] < 2.0  # the trained policy, not a fresh one (~5.6 = log of the vocabulary)


def test_tensorboard_metrics_are_under_the_stage_prefix(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for stage, tag in (("sft", "sft/train/loss"), ("rm", "rm/eval/accuracy")):
        events = EventAccumulator(str(runs / stage / "logs"))
        events.Reload()
        assert tag in events.Tags()["scalars"], events.Tags()["scalars"]


def test_rm_without_sft_says_what_to_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rlhf.cli", "stage=rm", "run=nothing"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "rlhf stage=sft run=nothing" in out.stdout + out.stderr


def test_ppo_runs_logs_its_metrics_and_saves_a_loadable_policy(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    m = manifest(runs, "ppo")
    assert m["status"] == "completed" and m["metrics"]["updates"] == 6
    for key in ("start_gold_sampled_mean", "final_gold_sampled_mean", "final_eos_sampled_rate"):
        assert 0.0 <= m["metrics"][key] <= 1.0
    events = EventAccumulator(str(runs / "ppo" / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("score", "score_raw", "kl", "beta", "non_score_reward", "entropy", "response_length", "eos_rate",
                 "policy_clipfrac", "value_clipfrac", "approx_kl", "value_loss", "explained_variance", "gold_score"):
        assert f"ppo/{name}" in tags, name
    assert "ppo/eval/gold_sampled_mean" in tags
    # the critic learns: its loss falls from the first update (it starts as the reward model)
    value_loss = [x.value for x in events.Scalars("ppo/value_loss")]
    assert value_loss[-1] < value_loss[0]
    policy = AutoModelForCausalLM.from_pretrained(runs / "ppo" / "final")
    assert policy.config.vocab_size == build_tiny_tokenizer().__len__()


def test_ppo_resumes_from_its_latest_checkpoint(runs):
    assert sorted(p.name for p in (runs / "ppo" / "checkpoints").iterdir()) == ["update_3", "update_6"]
    out = rlhf(runs.parent.parent, "stage=ppo", *PPO, "ppo.updates=8")
    assert "resumed from" in out.stdout + out.stderr and "update_6" in out.stdout + out.stderr
    m = manifest(runs, "ppo")
    assert m["metrics"]["updates"] == 8 and "start_gold_sampled_mean" not in m["metrics"]
