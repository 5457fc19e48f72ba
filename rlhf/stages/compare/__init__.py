"""`rlhf stage=compare`: the policies each stage produced, side by side on held-out prompts.

    policies  named checkpoints or hub ids (default: every policy this run's stages wrote: sft,
              ppo, dpo, bon_sft and their sweeps' points, ppo@algo=grpo, ..., each labelled by
              how it was trained), and bon:<n>, the best of n samples of a base policy picked
              by the reward source (`reward=`; the judging RM for reward=model): the classic
              baseline stage 3 must beat
    judge     the reward model (compare.reward_from, default this run's rm) and, on the toy
              task, the gold scorer; a run without an RM (DPO alone) is judged by gold only
    answers   the eval split's first `compare.prompts` prompts; in sampled mode
              `samples_per_prompt` answers each with seeds seed, seed+1, ... (the same prompts and
              seeds for every policy), in greedy mode one
    measures  RM score (normalised), gold score (toy task), KL to the reference (sampled
              estimate of sum log pi/pi_ref per answer; for bon:<n> the analytic
              log n - (n-1)/n), answer length, EOS rate, distinct-1/2; win rates against
              `compare.baseline` by RM and by gold, ties as halves, with bootstrap confidence
              intervals over prompts
    outputs   runs/<run>/compare/: report.md, results.json, samples.jsonl, *.png

`judge` is the core (answer, score, summarise), which `rlhf stage=evaluate` calls too.
report.md and the plots are drawn from results.json alone, so `compare.from_results=<file>`
redraws them without sampling. Under torchrun the prompts are shared out across ranks and rank
0 gathers the answers and writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rlhf.config import CompareConfig, ConfigError, RLHFConfig
from rlhf.core import distributed
from rlhf.core.artifacts import StageRun, write_atomic, write_json
from rlhf.core.distributed import device, is_main_process
from rlhf.data import load_data
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.sampling import Sample, best_of_n, build_reward, generate, response_logprob_sums, score
from rlhf.stages import compare_policies, output_path, resolve_inputs, reward_models, stage_dir
from rlhf.stages.compare.report import training_curves, write_report
from rlhf.stages.compare.stats import bon_kl, by_method, summarise

log = logging.getLogger(__name__)

BON_SEED_OFFSET = 1_000_003  # bon:<n>'s candidates use seeds apart from the sampled mode's


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    c = cfg.compare
    out = cfg.stage_dir
    if c.from_results:
        path = Path(c.from_results)
        if not path.is_file():
            raise ConfigError(f"compare.from_results={path}: no such file (a results.json of an earlier compare)")
        results = json.loads(path.read_text())
        if "methods" in results:  # derived from the rest: redrawn with today's code
            results["by_method"] = by_method(results)
        write_report(results, out)
        stage_run.metrics["from_results"] = str(path)
        return

    policies = compare_policies(cfg)
    inputs = resolve_inputs(cfg, "compare")
    reward_from, reference_from, bon_from = inputs.get("reward_from"), inputs["reference_from"], inputs["bon_from"]
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(cfg.data, tokenizer)
    held_out = bundle.require("eval", "prompts", "compare")[: c.prompts]
    prompts, sources = [x.prompt for x in held_out], [x.source for x in held_out]
    stage_run.manifest["inputs"] = {"policies": policies, "reward_from": reward_from, "reference_from": reference_from,
                              "bon_from": bon_from, "prompts": len(prompts)}
    stage_run.manifest["inputs"]["labels"] = {name: label for name, spec in policies.items()
                                              if (label := method_of(spec))}
    if reward_from is None:
        if bundle.gold_scorer is None:
            raise ConfigError(f"compare needs a judge: no reward model ({output_path(cfg, 'rm')} does not "
                              f"exist and compare.reward_from is null) and data {cfg.data.name!r} has no gold scorer. "
                              f"Run `rlhf stage=rm run={cfg.run}` first, or set compare.reward_from=<RM folder>")
        bons = [name for name, spec in policies.items() if spec.startswith("bon:")]
        if bons and cfg.reward.source == "model":
            raise ConfigError(f"compare.policies {bons}: best-of-n picks by a reward model, and there is none "
                              f"(run `rlhf stage=rm run={cfg.run}`, or set compare.reward_from)")
        log.info("compare: no reward model in run %r, so the answers are judged by the gold scorer alone", cfg.run)

    rm = load_reward_model(cfg.model, tokenizer, reward_from).to(device()).eval() if reward_from else None
    picker = bon_picker(cfg, tokenizer, rm, reward_from, policies, bundle.gold_scorer)
    reference = load_causal_lm(cfg.model, tokenizer, reference_from).to(device()).eval()
    bon_base = None
    if "sampled" in c.modes and any(spec.startswith("bon:") for spec in policies.values()):
        bon_base = reference if bon_from == reference_from else load_causal_lm(cfg.model, tokenizer, bon_from).to(device()).eval()
    results = judge(cfg, c, policies, prompts, out, tokenizer=tokenizer, rm=rm, gold_scorer=bundle.gold_scorer,
                    reference=reference, bon_base=bon_base, bon_reward=picker, sources=sources)
    if results is None:  # another rank's: rank 0 writes
        return
    results["methods"] = {name: label for name, spec in policies.items() if (label := method_of(spec))}
    results["eval_curves"] = eval_curves(policies)
    results["costs"] = training_costs(policies)
    results["by_method"] = by_method(results)
    if picker is not None and picker is not rm:
        results["bon_reward"] = picker.describe()
    results["training_curves"] = training_curves(Path(c.ppo_logs) if c.ppo_logs else stage_dir(cfg, "ppo") / "logs")
    write_json(out / "results.json", results)
    write_report(results, out)
    stage_run.metrics.update(headline_metrics(results))
    log.info("compare: %s", out / "report.md")


def bon_picker(cfg: RLHFConfig, tokenizer, rm, reward_from, policies: dict[str, str], gold=None):
    """What bon:<n> picks by: the `reward=` source (an ensemble, a function, a weighted sum);
    for reward=model, the judging reward model itself. None without bon:<n>."""
    if not any(spec.startswith("bon:") for spec in policies.values()):
        return None
    if cfg.reward.source == "model" and not cfg.reward.add:
        return rm
    paths = {**({"reward_from": reward_from} if reward_from else {}), **reward_models(cfg)}
    return build_reward(cfg.reward, lambda path: load_reward_model(cfg.model, tokenizer, path).to(device()).eval(), tokenizer,
                        paths, gold)


def _manifest_of(spec: str) -> dict:
    """The manifest of the stage that wrote a policy folder (runs/<run>/<stage>/final), or {}."""
    manifest = Path(spec).parent / "manifest.json"
    try:
        found = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def method_of(spec: str) -> str | None:
    """How a policy folder was trained, as its stage recorded it ("grpo, RM"), for the report."""
    return (_manifest_of(spec).get("method") or {}).get("label")


def eval_curves(policies: dict[str, str]) -> dict[str, dict]:
    """Each stage-3 policy's evaluations during training (gold score and KL of sampled answers
    by update), as its manifest recorded them, with its method label: the points of the
    gold-vs-sqrt(KL) plot."""
    curves = {}
    for name, spec in policies.items():
        manifest = _manifest_of(spec) if not spec.startswith("bon:") else {}
        evals = (manifest.get("metrics") or {}).get("evals")
        method = manifest.get("method")
        if evals and method:
            curves[name] = {"label": method["label"], "algorithm": method["algorithm"],
                            "reward": method["reward"].get("source"), "evals": evals}
    return curves


def training_costs(policies: dict[str, str]) -> dict[str, dict]:
    """The wall time and peak memory of the stage that wrote each policy, from its manifest."""
    costs = {}
    for name, spec in policies.items():
        manifest = _manifest_of(spec) if not spec.startswith("bon:") else {}
        found = {k: manifest[k] for k in ("duration_s", "peak_rss_mb") if k in manifest}
        if found:
            costs[name] = found
    return costs


def judge(cfg: RLHFConfig, c: CompareConfig, policies: dict[str, str], prompts: list, out: Path, *, tokenizer, rm,
          gold_scorer, reference=None, bon_base=None, bon_reward=None, section: str = "compare",
          sources: list[str] | None = None) -> dict | None:
    """Compare's core, which evaluate calls too: every policy answers `prompts` as `c` says
    (modes, samples per prompt, temperature), the answers are scored by the RM and the gold
    scorer, written to out/samples.jsonl and summarised (what results.json holds). KL is
    measured to `reference` when one is given; bon:<n> samples `bon_base` (its KL the analytic
    one when that is the reference) and picks by `bon_reward` (default the RM). Under torchrun
    the prompts are shared out across ranks;
    rank 0 gathers and returns the summary, the others None. `section` names the config
    section in errors; `sources` (each prompt's data source) adds the scores per source."""
    from tqdm.auto import tqdm

    max_new_tokens = c.max_new_tokens or cfg.data.max_response_tokens
    mine = list(range(distributed.rank(), len(prompts), distributed.world_size()))  # this rank's share of the prompts
    records: list[dict] = []
    # one step per batch of answers: samples_per_prompt (+1 greedy) per policy, n per bon:<n> sample
    steps = sum(c.samples_per_prompt * int(spec[4:]) * ("sampled" in c.modes) if spec.startswith("bon:") else
                c.samples_per_prompt * ("sampled" in c.modes) + ("greedy" in c.modes) for spec in policies.values())
    progress = tqdm(total=steps, desc=section, unit="pass", disable=not is_main_process())
    for name, spec in policies.items():
        log.info("%s: answering with %s (%s)", section, name, spec)
        progress.set_postfix(policy=name)
        if spec.startswith("bon:"):
            if "sampled" not in c.modes:
                continue
            records += _best_of_n(name, int(spec[4:]), bon_base, bon_base is reference, rm,
                                  rm if bon_reward is None else bon_reward, tokenizer, gold_scorer, prompts, mine,
                                  cfg, c, max_new_tokens)
            progress.update(c.samples_per_prompt * int(spec[4:]))
            continue
        policy = _load_policy(cfg, tokenizer, f"{section}.policies.{name}", spec)
        for mode in c.modes:
            seeds = [cfg.seed + j for j in range(c.samples_per_prompt)] if mode == "sampled" else [cfg.seed]
            for j, seed in enumerate(seeds):
                answers = generate(policy, tokenizer, [prompts[i] for i in mine], max_new_tokens=max_new_tokens,
                                   greedy=mode == "greedy", temperature=c.temperature, batch_size=c.batch_size,
                                   seed=seed)
                kl = None
                if mode == "sampled" and reference is not None:
                    # the policy's log-probs come from sampling; the reference's need a pass
                    kl = (torch.tensor([a.logprob for a in answers])
                          - response_logprob_sums(reference, tokenizer, answers, c.temperature, c.batch_size))
                records += _records(name, mode, j, mine, answers, rm, tokenizer, gold_scorer, kl, "sampled")
                progress.update(1)
        del policy
    progress.close()

    records = distributed.gather_objects(records)
    if not is_main_process():
        return None
    records.sort(key=lambda r: (r["policy"], r["mode"], r["prompt_index"], r["sample"]))
    write_atomic(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return summarise(records, cfg, policies, prompts, c, sources)


def headline_metrics(results: dict) -> dict[str, float]:
    """The manifest's figures from a summary: each policy's RM and gold score and win rates (by
    RM, gold and length), as `<mode>/<policy>/<figure>`."""
    return {f"{mode}/{name}/{k}": v.get("mean", v.get("value")) if isinstance(v, dict) else v
            for mode, table in results["modes"].items() for name, row in table.items()
            for k, v in row.items() if k in ("rm_score", "gold_score", "win_rate_rm", "win_rate_gold",
                                             "win_rate_length") and v is not None}


def _load_policy(cfg: RLHFConfig, tokenizer, field: str, spec: str):
    try:
        return load_causal_lm(cfg.model, tokenizer, spec).to(device()).eval()
    except OSError as e:  # what transformers raises for a folder or hub id it cannot find
        bon = ", or bon:<n>" if field.startswith("compare.") else ""
        raise ConfigError(f"{field}={spec!r}: cannot load it ({e}); give a Hugging Face folder "
                          f"(e.g. runs/<run>/ppo/final), a hub id{bon}") from e


def _records(name, mode, sample, indices, answers: list[Sample], rm, tokenizer, gold_scorer, kl, kl_method,
             rm_scores=None):
    if rm_scores is None and rm is not None:
        rm_scores = score(rm, tokenizer, [a.prompt for a in answers], [a.text for a in answers])
    rows = []
    for k, (i, a) in enumerate(zip(indices, answers)):
        # prompts with verifiable instructions: which ones the answer follows (IFEval's accuracies)
        verdict = gold_scorer.verdict(a.prompt, a.text) if hasattr(gold_scorer, "verdict") else None
        gold = verdict.prompt_strict if verdict else gold_scorer(a.prompt, a.text) if gold_scorer else None
        rows.append({"policy": name, "mode": mode, "prompt_index": i, "sample": sample, "prompt": a.prompt,
                     "response": a.text,
                     "rm_score": float(rm_scores[k]) if rm_scores is not None else None,
                     "gold_score": float(gold) if gold is not None else None,
                     **({"instructions": {"ids": list(verdict.ids), "strict": list(verdict.strict),
                                          "loose": list(verdict.loose)}} if verdict else {}),
                     "kl": float(kl[k]) if kl is not None else None, "kl_method": kl_method if kl is not None else None,
                     "tokens": len(a.token_ids), "ended": a.ended})
    return rows


def _best_of_n(name, n, base, base_is_reference, rm, picker, tokenizer, gold_scorer, prompts, mine, cfg, c,
               max_new_tokens) -> list[dict]:
    """Sampled mode only: best-of-n of greedy answers would be the greedy answer. `picker` is
    the reward source that picks; `rm` judges (the same model for reward=model)."""
    rows = []
    for j in range(c.samples_per_prompt):
        picks = best_of_n(base, picker, tokenizer, [prompts[i] for i in mine],
                          seeds=[cfg.seed + BON_SEED_OFFSET + j * n + k for k in range(n)],
                          max_new_tokens=max_new_tokens, temperature=c.temperature, batch_size=c.batch_size)
        kl = torch.full((len(picks.best),), bon_kl(n)) if base_is_reference else None
        chosen = _records(name, "sampled", j, mine, picks.best, rm, tokenizer, gold_scorer, kl, "analytic",
                          picks.best_scores if picker is rm else None)
        key = "rm_score" if picker is rm else "pick_score"  # pick_score: by the reward= source
        for i, row in enumerate(chosen):  # the n candidates stay in samples.jsonl, beside the pick
            row["candidates"] = [{"response": cand[i].text, key: float(picks.scores[k, i])}
                                 for k, cand in enumerate(picks.candidates)]
        rows += chosen
    return rows



