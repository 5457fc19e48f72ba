"""SFT then RM end to end on a small toy run, as `rlhf stage=sft` / `rlhf stage=rm` run them."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import ModelConfig
from rlhf.data import toy
from rlhf.models import build_tiny_model, build_tiny_tokenizer
from tests.conftest import manifest, write_lines

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the module's run, and the ensemble sweep

SMALL = ["run=small", "data.toy.num_prompts=3000", "logger.every_steps=5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_cli):
    root = tmp_path_factory.mktemp("stages")
    run_cli(*SMALL, "stage=sft", "sft.epochs=6", "sft.gold_eval_prompts=64", "sft.save_every_steps=50", cwd=root)
    run_cli(*SMALL, "stage=rm", "rm.epochs=2", "rm.eval_every_steps=20", cwd=root)
    run_cli(*SMALL, "stage=ppo", *PPO, "ppo.updates=6", cwd=root)
    run_cli(*SMALL, "stage=compare", "compare.prompts=24", "compare.samples_per_prompt=2",
            "compare.bootstrap_resamples=200", cwd=root)
    return root / "runs" / "small"


PPO = ["ppo.rollout_batch_size=32", "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.eval_prompts=32",
       "ppo.eval_every_updates=3", "ppo.save_every_updates=3", "ppo.learning_rate=1e-4", "ppo.critic_warmup_updates=2"]


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
        # a perfect answer scores 1 and no answer more, so the mean is at least the perfect share
        assert metrics[f"gold_{mode}_perfect"] <= metrics[f"gold_{mode}_mean"]
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
from rlhf.sampling import score
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


def test_rm_without_sft_says_what_to_run(tmp_path, run_cli):
    out = run_cli("stage=rm", "run=nothing", cwd=tmp_path, expect=2, timeout=120)
    assert "rlhf stage=sft run=nothing" in out.stdout + out.stderr


def test_sft_adopt_writes_its_starting_model_unchanged_and_refuses_the_untrained_tiny_model(runs, tmp_path, run_cli):
    start = runs / "sft" / "final"
    run_cli("run=adopted", "stage=sft", "sft.adopt=true", f"sft.init_from={start}", cwd=tmp_path, timeout=300)
    adopted = tmp_path / "runs" / "adopted" / "sft"
    before, after = load_file(start / "model.safetensors"), load_file(adopted / "final" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert manifest(adopted.parent, "sft")["metrics"] == {"adopted": 1}
    out = run_cli("run=fresh", "stage=sft", "sft.adopt=true", cwd=tmp_path, expect=2, timeout=300)
    assert "sft.adopt=true keeps the starting model as it is, and the tiny model is built fresh" in out.stdout + out.stderr


def test_ppo_runs_logs_its_metrics_and_saves_a_loadable_policy(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    m = manifest(runs, "ppo")
    assert m["status"] == "completed" and m["metrics"]["updates"] == 6
    evals = m["metrics"]["evals"]  # every 3 updates: the start, update 3, the end
    assert [e["update"] for e in evals] == [0, 3, 6]
    for key in ("gold_sampled_mean", "gold_greedy_mean", "eos_sampled_rate"):
        assert (m["metrics"][f"start_{key}"], m["metrics"][f"final_{key}"]) == (evals[0][key], evals[-1][key])
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


def test_ppo_resumes_from_its_latest_checkpoint(runs, run_cli):
    assert sorted(p.name for p in (runs / "ppo" / "checkpoints").iterdir()) == ["update_3", "update_6"]
    out = run_cli(*SMALL, "stage=ppo", *PPO, "ppo.updates=8", cwd=runs.parent.parent)
    assert "resumed from" in out.stdout + out.stderr and "update_6" in out.stdout + out.stderr
    m = manifest(runs, "ppo")
    assert m["metrics"]["updates"] == 8 and "start_gold_sampled_mean" not in m["metrics"]


def test_compare_report_agrees_with_its_samples_and_redraws_from_results(runs, tmp_path, run_cli):
    import numpy as np
    from PIL import Image

    from rlhf.stages.compare.stats import per_prompt_wins

    out = runs / "compare"
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert list(results["policies"]) == ["sft", "ppo", "bon:4"]
    sampled = results["modes"]["sampled"]
    bon = [s for s in samples if s["policy"] == "bon:4"]
    assert len(bon) == 24 * 2
    for s in bon:  # the pick is the candidate the RM scored highest
        assert len(s["candidates"]) == 4
        best = max(s["candidates"], key=lambda c: c["rm_score"])
        assert s["rm_score"] == pytest.approx(best["rm_score"], abs=1e-4) and s["response"] == best["response"]
    assert not any(s["mode"] == "greedy" and s["policy"] == "bon:4" for s in samples)

    def matrix(policy, metric):
        rows = [s for s in samples if s["policy"] == policy and s["mode"] == "sampled"]
        m = np.zeros((24, 2))
        for r in rows:
            m[r["prompt_index"], r["sample"]] = r[metric]
        return m

    for policy in ("ppo", "bon:4"):
        for metric, key in (("rm_score", "win_rate_rm"), ("gold_score", "win_rate_gold")):
            expected = per_prompt_wins(matrix(policy, metric), matrix("sft", metric)).mean()
            entry = sampled[policy][key]
            assert entry["value"] == pytest.approx(expected)
            assert entry["low"] <= entry["value"] <= entry["high"]
        assert sampled[policy]["rm_score"]["mean"] == pytest.approx(matrix(policy, "rm_score").mean())
    assert sampled["sft"]["kl"]["mean"] == pytest.approx(0.0, abs=1e-4)  # the reference itself
    assert sampled["bon:4"]["kl_method"] == "analytic"
    report = (out / "report.md").read_text()
    assert "| ppo |" in report and "| bon:4 |" in report and "win rate by gold" in report
    assert results["methods"] == {"ppo": "ppo, RM"}  # from ppo's manifest: algorithm and reward source
    assert "| ppo | ppo, RM |" in report  # the policies table
    evals = results["eval_curves"]["ppo"]["evals"]
    assert [e["update"] for e in evals] == [0, 3, 6] and all("kl_sampled_mean" in e for e in evals)
    for png in ("scores.png", "rm_vs_kl.png", "training.png", "gold_vs_sqrt_kl.png"):
        with Image.open(out / png) as image:
            image.load()  # decodes every pixel
            assert image.format == "PNG" and min(image.size) > 100

    # redraw from results.json alone, in another run: no samples, same report text
    copy = tmp_path / "results.json"
    copy.write_text((out / "results.json").read_text())
    run_cli(*SMALL, "run=redraw", "stage=compare", f"compare.from_results={copy}", cwd=runs.parent.parent)
    redrawn = runs.parent / "redraw" / "compare"
    assert (redrawn / "report.md").read_text() == report
    assert not (redrawn / "samples.jsonl").exists()


def test_generate_prints_answers_from_argument_file_and_stdin(runs, tmp_path, run_cli):
    out = run_cli(*SMALL, "stage=generate", "generate.prompt=sort ascending: 3 1 2", "generate.greedy=true",
                  cwd=runs.parent.parent)
    assert "> sort ascending: 3 1 2\n" in out.stdout
    answer = out.stdout.split("> sort ascending: 3 1 2\n")[1].splitlines()[0]
    assert answer.strip() and "policy: " in out.stdout + out.stderr and "ppo/final" in out.stdout + out.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sort descending: 1 2\n\nsort ascending: 9 8 7\n")
    out = run_cli(*SMALL, "stage=generate", f"generate.prompts_file={prompts}", "generate.num_samples=2",
                  cwd=runs.parent.parent)
    assert out.stdout.count("> sort descending: 1 2") == 2 and out.stdout.count("> sort ascending: 9 8 7") == 2
    piped = run_cli(*SMALL, "stage=generate", cwd=runs.parent.parent, input="sort ascending: 5 4\n", timeout=300)
    assert "> sort ascending: 5 4" in piped.stdout
    missing = run_cli(*SMALL, "stage=generate", f"generate.prompts_file={tmp_path / 'nope.txt'}",
                      cwd=runs.parent.parent, expect=2, timeout=300)
    assert "nope.txt: no such file" in missing.stdout + missing.stderr


@pytest.mark.distributed
def test_compare_shares_prompts_across_two_ranks_and_gathers_every_answer(runs, run_cli):
    run_cli(*SMALL, "run=small", "stage=compare", "compare.prompts=10", "compare.samples_per_prompt=2",
            "compare.modes=[sampled]", "compare.bootstrap_resamples=50", cwd=runs.parent.parent, ranks=2)
    samples = [json.loads(line) for line in (runs / "compare" / "samples.jsonl").read_text().splitlines()]
    for policy in ("sft", "ppo", "bon:4"):
        got = sorted((s["prompt_index"], s["sample"]) for s in samples if s["policy"] == policy)
        assert got == [(i, j) for i in range(10) for j in range(2)], policy


def test_bon_sft_rounds_sample_from_the_last_round_and_a_rerun_keeps_finished_rounds(runs, run_cli):
    """Two rounds of best-of-4 distillation on 32 prompts: round 2 samples from round 1's policy;
    rerun, round 1's policy is kept (not retrained) and the stage ends the same way."""
    args = [*SMALL, "stage=bon_sft", "bon_sft.prompts=32", "bon_sft.max_steps=3", "bon_sft.rounds=2",
            "bon_sft.gold_eval_prompts=8", "bon_sft.learning_rate=1e-3", "bon_sft.eval_every_steps=0"]
    out = run_cli(*args, cwd=runs.parent.parent)
    log = out.stdout + out.stderr
    round_1 = runs / "bon_sft" / "checkpoints" / "round_1" / "final"
    assert f"round 2: fine-tuning {round_1.relative_to(runs.parent.parent)}" in log
    for k in (1, 2):
        picks = [json.loads(x) for x in (runs / "bon_sft" / f"round_{k}" / "picks.jsonl").read_text().splitlines()]
        assert [p["prompt_index"] for p in picks] == list(range(32))
        assert all(len(p["candidate_scores"]) == 4 for p in picks)
        # each pick is its prompt's best candidate by the RM; the unended are not trained on
        assert all(p["score"] == max(x for x in p["candidate_scores"] if x is not None) for p in picks)
        assert manifest(runs, "bon_sft")["metrics"][f"round_{k}/picks_trained"] == sum(p["ended"] for p in picks)
        assert [p["gold_score"] for p in picks] == [toy.gold_score(p["prompt"], p["response"]) for p in picks]
        assert manifest(runs, "bon_sft")["metrics"][f"round_{k}/picks_gold_mean"] == pytest.approx(
            sum(p["gold_score"] for p in picks) / len(picks))
    metrics = manifest(runs, "bon_sft")["metrics"]
    assert "round_2/gold_sampled_mean" in metrics and "round_1/gold_sampled_mean" not in metrics  # the last policy's
    trained = load_file(round_1 / "model.safetensors")
    sft = load_file(runs / "sft" / "final" / "model.safetensors")
    assert any(not torch.equal(trained[k], sft[k]) for k in sft)  # round 1 trained

    out = run_cli(*args, cwd=runs.parent.parent)
    assert "round 1: " in out.stdout + out.stderr and "exists, kept" in out.stdout + out.stderr
    kept = load_file(round_1 / "model.safetensors")
    assert all(torch.equal(kept[k], v) for k, v in trained.items())


def test_evaluate_measures_the_rm_beside_the_length_baseline_and_judges_policies(runs, run_cli):
    """The run's RM on the eval split: the RM stage's accuracy again, with the length baseline
    and gold printed; sft and ppo answer 8 prompts and report.md holds their win rates."""
    out = run_cli(*SMALL, "run=evaluated", f"evaluate.reward_from={runs / 'rm' / 'final'}", "stage=evaluate",
                  "evaluate.split=eval", "evaluate.bootstrap_resamples=100", "evaluate.prompts=8",
                  f"evaluate.policies={{sft: '{runs / 'sft' / 'final'}', ppo: '{runs / 'ppo' / 'final'}'}}",
                  cwd=runs.parent.parent)
    assert "RM accuracy" in out.stdout and "the longer reply wins" in out.stdout
    assert "gold scorer: the RM orders" in out.stdout
    folder = runs.parent / "evaluated" / "evaluate"
    results = json.loads((folder / "results.json").read_text())
    m = results["rm_on_comparisons"]
    assert m["accuracy"] == pytest.approx(manifest(runs, "rm")["metrics"]["eval_accuracy"], abs=0.01)
    assert m["longer_wins"] + m["shorter_wins"] + m["same_length"] == pytest.approx(1.0)
    # the labels' agreement with gold is a property of the data: the RM stage measured the same
    assert m["gold_label_accuracy"] == pytest.approx(manifest(runs, "rm")["metrics"]["gold_label_accuracy"])
    assert m["accuracy_low"] <= m["accuracy"] <= m["accuracy_high"]
    rows = (folder / "comparisons.jsonl").read_text().splitlines()
    assert len(rows) == m["comparisons"]
    ppo = results["policies_on_prompts"]["modes"]["sampled"]["ppo"]
    assert ppo["win_rate_rm"]["low"] <= ppo["win_rate_rm"]["value"] <= ppo["win_rate_rm"]["high"]
    assert ppo["win_rate_gold"] is not None and ppo["kl"] is None  # no reference: no KL
    report = (folder / "report.md").read_text()
    assert "## Reward model on comparisons" in report and "| ppo |" in report and "win rate by RM" in report
    assert manifest(runs.parent / "evaluated", "evaluate")["metrics"]["sampled/ppo/win_rate_rm"] == ppo["win_rate_rm"]["value"]


def test_evaluate_reads_a_pairwise_file_without_a_gold_scorer(runs, tmp_path, run_cli):
    pairs = [{"prompt": f"sort ascending: {i} 1", "chosen": f"1 {i}", "rejected": f"{i} 1 1 1"} for i in range(2, 6)]
    write_lines(tmp_path / "pairs.jsonl", pairs)
    out = run_cli("run=pairs", f"evaluate.reward_from={runs / 'rm' / 'final'}", "stage=evaluate", "data=jsonl",
                  f"data.path={tmp_path / 'pairs.jsonl'}", "evaluate.bootstrap_resamples=50", cwd=tmp_path)
    assert "on 4 pairs of 4 comparisons" in out.stdout and "the shorter 1.000" in out.stdout
    assert "gold scorer" not in out.stdout
    assert (tmp_path / "runs" / "pairs" / "evaluate" / "report.md").exists()


def test_evaluate_answers_the_first_turn_of_a_questions_file(runs, tmp_path, run_cli):
    """MT-bench's question.jsonl: each record a list of turns; the policies answer the first."""
    questions = [{"question_id": 81 + i, "category": "writing", "turns": [f"sort ascending: {i} 3 1", "and again?"]}
                 for i in range(3)]
    write_lines(tmp_path / "question.jsonl", questions)
    run_cli("run=questions", f"evaluate.reward_from={runs / 'rm' / 'final'}", "stage=evaluate", "data=jsonl",
            "data.format=prompt", f"data.path={tmp_path / 'question.jsonl'}", "data.fields.prompt=turns.0",
            f"evaluate.policies={{sft: '{runs / 'sft' / 'final'}'}}", "evaluate.bootstrap_resamples=50", cwd=tmp_path)
    folder = tmp_path / "runs" / "questions" / "evaluate"
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert sorted(s["prompt"] for s in samples) == [q["turns"][0] for q in questions]
    assert "| sft |" in (folder / "report.md").read_text()


def test_a_sweep_of_critic_free_algorithms_against_an_rm_ensemble_keeps_every_point(runs, run_cli):
    """`rlhf -m stage=rm seed=1,2` adds two ensemble members beside the run's rm; a sweep over
    algo= writes one folder per point; each trains against the ensemble, builds no critic, and
    records its method; compare sets every point beside sft and bon:4 (picked by the ensemble),
    labelled by method. Runs last in this module: it adds folders to the shared run."""
    root = runs.parent.parent
    run_cli("-m", *SMALL, "stage=rm", "seed=1,2", "rm.max_steps=10", "rm.eval_every_steps=0", "rm.wrong_digit_pairs=0",
            "rm.normalize_max_demonstrations=32", cwd=root)
    assert manifest(runs, "rm@seed=2")["status"] == "completed"
    run_cli("-m", *SMALL, "stage=ppo", "algo=grpo,rloo", "reward=ensemble", "reward.combine=mean_minus_std",
            "reward.std_coef=0.5", "ppo.rollout_batch_size=32", "ppo.mini_batch_size=16", "ppo.eval_prompts=32",
            "ppo.eval_every_updates=1", "ppo.learning_rate=1e-4", "ppo.updates=2", cwd=root)
    members = ["runs/small/rm/final", "runs/small/rm@seed=1/final", "runs/small/rm@seed=2/final"]  # as resolved
    for algo in ("grpo", "rloo"):
        m = manifest(runs, f"ppo@algo={algo}")
        assert m["status"] == "completed" and m["metrics"]["updates"] == 2
        assert m["method"]["label"] == f"{algo}, ensemble of 3 (mean - 0.5 std)"
        assert m["method"]["reward"]["ensemble"] == members
        assert [m["inputs"][f"member_{i}"] for i in range(3)] == members
        assert set(m["distributed"]) == {"policy", "ref", "reward_0", "reward_1", "reward_2"}  # no critic
        assert not (runs / f"ppo@algo={algo}" / "checkpoints" / "update_2" / "value").exists()
        assert [e["update"] for e in m["metrics"]["evals"]] == [0, 1, 2]
    assert not (runs / "ppo" / "checkpoints" / "update_2").exists()  # the run's own ppo untouched

    run_cli(*SMALL, "stage=compare", "variant=family", "reward=ensemble", "compare.prompts=16",
            "compare.samples_per_prompt=1", "compare.modes=[sampled]", "compare.bootstrap_resamples=100", cwd=root)
    out = runs / "compare@family"
    assert "stage compare -> " in (out / "rlhf.log").read_text()  # the variant's log beside its outputs
    results = json.loads((out / "results.json").read_text())
    names = list(results["policies"])  # (bon_sft too, from a test above)
    assert names[:4] == ["sft", "ppo", "ppo@algo=grpo", "ppo@algo=rloo"] and names[-1] == "bon:4"
    assert results["methods"]["ppo@algo=rloo"] == "rloo, ensemble of 3 (mean - 0.5 std)"
    assert results["bon_reward"]["ensemble"] == members
    bon = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()
           if json.loads(line)["policy"] == "bon:4"]
    assert bon and all(len(s["candidates"]) == 4 and "pick_score" in s["candidates"][0] for s in bon)
    # the pick is the candidate the ensemble scored highest; the RM column is the judge's score
    for s in bon:
        assert s["response"] == max(s["candidates"], key=lambda c: c["pick_score"])["response"]
    assert "ppo@algo=grpo | grpo, ensemble of 3 (mean - 0.5 std)" in (out / "report.md").read_text()


def test_round_two_collects_on_the_policy_retrains_the_rm_on_both_sources_and_runs_stage_3_again(runs, run_cli):
    """InstructGPT's loop: `stage=pipeline loop.round=2` collects the round-1 policy's answers
    (ranked by the simulated labeller), trains the RM on the built-in and the collected
    comparisons (accuracy of each), runs stage 3 from the SFT policy against it, in
    runs/<run>/round_2/; a rerun skips every stage; an unranked file stops the RM."""
    root = runs.parent.parent
    loop = ["stage=pipeline", "loop.round=2", "stages=[collect,rm,ppo]", "collect.max_prompts=48", "rm.epochs=1",
            "rm.eval_every_steps=0", *PPO, "ppo.updates=2"]
    run_cli(*SMALL, *loop, cwd=root)
    two = runs / "round_2"
    records = [json.loads(line) for line in (two / "collect" / "comparisons.jsonl").read_text().splitlines()]
    collect = json.loads((two / "collect" / "manifest.json").read_text())
    assert collect["inputs"]["policies"] == ["runs/small/ppo/final"]  # round 1's policy
    assert 0 < len(records) <= 96 and {r["split"] for r in records} == {"rm", "eval"}
    for r in records:
        texts = [a["text"] for a in r["responses"]]
        assert 2 <= len(texts) == len(set(texts)) <= 4  # K distinct answers
        assert r["labeller"] == "gold (label_noise 0.1)" and len({a["rank"] for a in r["responses"]}) >= 2
        assert [a["rank"] for a in r["responses"]] == sorted(a["rank"] for a in r["responses"])
        for a in r["responses"]:
            assert a["policy"] == "runs/small/ppo/final" and a["temperature"] == 1.0
            assert a["seed"] >= 3_000_017 and isinstance(a["ended"], bool)
    m = collect["metrics"]
    assert m["records"] == len(records) and m["answers"] == 4 * m["prompts"] == 4 * 96
    assert m["answers_ranked"] == sum(len(r["responses"]) for r in records)
    # an exact answer scores 1 and no answer more: the mean gold is at least the exact answers' share
    assert m["answers_ranked"] + m["duplicate_answers"] <= m["answers"] and m["exact_rate"] <= m["gold_mean"]

    rm = json.loads((two / "rm" / "manifest.json").read_text())
    assert rm["lineage"]["collected:round_2"]["path"] == "runs/small/round_2/collect/comparisons.jsonl"
    assert rm["inputs"]["init_from"] == "runs/small/sft/final"  # retrained from round 1's sft
    sources = ("toy", "collected_round_2")
    pairs = {s: rm["metrics"][f"eval_pairs_source_{s}"] for s in sources}
    assert all(pairs.values()) and sum(pairs.values()) == rm["metrics"]["eval_pairs"]
    # the accuracy of all pairs is the pair-weighted mean of each source's
    assert rm["metrics"]["eval_accuracy"] == pytest.approx(
        sum(rm["metrics"][f"eval_accuracy_source_{s}"] * pairs[s] for s in sources) / rm["metrics"]["eval_pairs"])
    # the blind-spot pairs come from the eval split's prompts: the same pairs as round 1's RM
    assert rm["metrics"]["wrong_digit_pairs"] == manifest(runs, "rm")["metrics"]["wrong_digit_pairs"] > 0
    assert "wrong_digit_accuracy" in manifest(runs, "rm")["metrics"]
    ppo = json.loads((two / "ppo" / "manifest.json").read_text())
    assert ppo["status"] == "completed" and (two / "ppo" / "final" / "model.safetensors").exists()
    assert ppo["lineage"]["policy_from"]["path"] == "runs/small/sft/final"
    assert ppo["lineage"]["reward_from"]["path"] == "runs/small/round_2/rm/final"
    assert "stage ppo -> runs/small/round_2/ppo" in (two / "pipeline" / "rlhf.log").read_text()

    again = run_cli(*SMALL, *loop, cwd=root)
    assert again.stderr.count("up to date") + again.stdout.count("up to date") == 3

    # a file for a person to rank: empty ranks, and the RM refuses it, naming file and record
    run_cli(*SMALL, "stage=collect", "loop.round=3", "collect.labeller=none", "collect.max_prompts=4", cwd=root)
    unranked = runs / "round_3" / "collect" / "comparisons.jsonl"
    assert all(a["rank"] is None for line in unranked.read_text().splitlines()
               for a in json.loads(line)["responses"])
    out = run_cli(*SMALL, "stage=rm", "loop.round=3", cwd=root, expect=2)
    assert "runs/small/round_3/collect/comparisons.jsonl line 1: field 'responses[0].rank': not ranked yet" in \
        out.stderr + out.stdout


@pytest.mark.distributed
def test_collect_shares_prompts_across_two_ranks_and_writes_each_once(runs, run_cli):
    root = runs.parent.parent
    run_cli(*SMALL, "stage=collect", "loop.round=2", "variant=two_ranks", "collect.max_prompts=12",
            "collect.splits=[eval]", cwd=root, ranks=2)
    records = [json.loads(line) for line in
               (runs / "round_2" / "collect@two_ranks" / "comparisons.jsonl").read_text().splitlines()]
    m = json.loads((runs / "round_2" / "collect@two_ranks" / "manifest.json").read_text())["metrics"]
    assert m["prompts"] == 12 and m["answers"] == 48 and m["records"] == len(records) > 0
    prompts = [r["prompt"] for r in records]
    assert len(set(prompts)) == len(prompts)  # no prompt twice: each rank answered its own share
