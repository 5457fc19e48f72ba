"""Seeded mutants: hand-chosen mistakes in the code that decides results, each of which the unit
tests must catch. `make mutants` applies each one to a copy of the tree, runs tests/unit
(`-m "not slow"`, the test named beside the mutant first, stopping at the first failure) and
prints one JSON line per mutant and a summary; it exits 1 if any mutant survives. A survivor is
a hole in the tests: the line names the test that should have caught it.

    python tests/mutants.py                    # every mutant
    python tests/mutants.py gae_gamma rloo_k    # some, by name
    python tests/mutants.py --list

Why not only a mutation tool: mutmut and cosmic-ray mutate every operator they find, most of
them in code whose mistakes no result depends on; this list is the mistakes an RLHF
implementation is known to make (each line says which), so a survivor here is a real gap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (file, code as it is, code as mutated, the test that should kill it)
MUTANTS: dict[str, tuple[str, str, str, str]] = {
    # advantages: GAE's discount and lambda, the mask that stops credit at EOS, the baselines
    "gae_gamma": ("rlhf/algos/advantages.py", "delta = rewards[:, t] + gamma * next_value - values[:, t]",
                  "delta = rewards[:, t] + next_value - values[:, t]", "tests/unit/test_ppo_losses.py"),
    "gae_lambda": ("rlhf/algos/advantages.py", "next_advantage = delta + gamma * lam * next_advantage",
                   "next_advantage = delta + gamma * next_advantage", "tests/unit/test_ppo_losses.py"),
    "gae_mask": ("rlhf/algos/advantages.py", "        next_advantage = next_advantage * mask[:, t]\n", "",
                 "tests/unit/test_ppo_losses.py"),
    "gae_returns": ("rlhf/algos/advantages.py", "return advantages * mask, (advantages + values) * mask",
                    "return advantages * mask, advantages * mask", "tests/unit/test_ppo_losses.py"),
    "grpo_no_baseline": ("rlhf/algos/advantages.py", "    advantage = total - mean\n", "    advantage = total\n",
                         "tests/unit/test_advantages.py"),
    "grpo_no_std": ("rlhf/algos/advantages.py", "advantage = advantage / (std + 1e-4)", "advantage = advantage",
                    "tests/unit/test_advantages.py"),
    "group_std_biased": ("rlhf/algos/advantages.py", "std = (squares / (count - 1).clamp(min=1)).sqrt()",
                         "std = (squares / count).sqrt()", "tests/unit/test_advantages.py"),
    "rloo_k": ("rlhf/algos/advantages.py", "others = (mean * count - total) / (count - 1).clamp(min=1)",
               "others = mean", "tests/unit/test_advantages.py"),
    "reinforce_pp_baseline_sign": ("rlhf/algos/advantages.py", "last] -= group_stats(x.scores, x.groups)[0]",
                                   "last] += group_stats(x.scores, x.groups)[0]", "tests/unit/test_advantages.py"),
    "whiten_biased_var": ("rlhf/core/ops.py", "var = total((centered**2).sum()) / (count - 1).clamp(min=1)",
                          "var = total((centered**2).sum()) / count.clamp(min=1)", "tests/unit/test_advantages.py"),
    "whiten_unmasked_mean": ("rlhf/core/ops.py", "mean = total((x * mask).sum()) / count.clamp(min=1)",
                             "mean = x.mean()", "tests/unit/test_advantages.py"),
    # the KL: its estimators, where the penalty enters, the adaptive controller's direction
    "k1_sign": ("rlhf/algos/kl.py", "    return logprobs - ref_logprobs\n", "    return ref_logprobs - logprobs\n",
                "tests/unit/test_ppo_losses.py"),
    "k3_ratio": ("rlhf/algos/kl.py", "return torch.expm1(-log_ratio) + log_ratio", "return torch.expm1(log_ratio) - log_ratio",
                 "tests/unit/test_ppo_losses.py"),
    "kl_controller_sign": ("rlhf/algos/kl.py", "error = min(max(kl / self.target - 1.0, -0.2), 0.2)",
                           "error = min(max(1.0 - kl / self.target, -0.2), 0.2)", "tests/unit/test_ppo_losses.py"),
    "kl_penalty_sign": ("rlhf/algos/rewards.py", "rewards = -beta * kl * mask", "rewards = beta * kl * mask",
                        "tests/unit/test_ppo_losses.py"),
    # the score: on the last response token (EOS), the EOS trick
    "score_after_eos": ("rlhf/algos/rewards.py", "last = (mask.sum(1).long() - 1).clamp(min=0)",
                        "last = mask.sum(1).long().clamp(max=mask.shape[1] - 1)", "tests/unit/test_ppo_losses.py"),
    "no_eos_trick": ("rlhf/algos/rewards.py", "return torch.where(ended, scores, torch.full_like(scores, no_eos_score))",
                     "return scores", "tests/unit/test_ppo_rollout.py"),
    # the clipped surrogate: its range, its max, the critic's clip, GSPO's length normalisation
    "clip_symmetric_high": ("rlhf/algos/policy_loss.py",
                            "torch.clamp(ratio, 1.0 - clip, 1.0 + (clip if clip_high is None else clip_high))",
                            "torch.clamp(ratio, 1.0 - clip, 1.0 + clip)", "tests/unit/test_grpo_variants.py"),
    "surrogate_min": ("rlhf/algos/policy_loss.py", "losses = torch.maximum(unclipped, clipped) * mask",
                      "losses = torch.minimum(unclipped, clipped) * mask", "tests/unit/test_grpo_variants.py"),
    "value_clip_off": ("rlhf/algos/critic.py", "loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)",
                       "loss = 0.5 * masked_mean(unclipped_loss, mask)", "tests/unit/test_ppo_losses.py"),
    "gspo_sum_ratio": ("rlhf/algos/policy_loss.py", "log_ratio = ((logprobs - old_logprobs) * mask).sum(1) / lengths",
                       "log_ratio = ((logprobs - old_logprobs) * mask).sum(1)", "tests/unit/test_grpo_variants.py"),
    "agg_seq_mean_as_token_mean": ("rlhf/algos/policy_loss.py",
                                   "return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / rows * tokens / own",
                                   "return masked_mean(losses, mask)", "tests/unit/test_grpo_variants.py"),
    "tis_uncapped": ("rlhf/algos/policy_loss.py", "return torch.exp(logprobs - engine_logprobs).clamp(max=cap).detach()",
                     "return torch.exp(logprobs - engine_logprobs).detach()", "tests/unit/test_ppo_losses.py"),
    "overlong_ramp": ("rlhf/algos/rewards.py", "return -penalty * (over / buffer).clamp(max=1.0)",
                      "return -penalty * (over > 0).to(over.dtype)", "tests/unit/test_grpo_variants.py"),
    # the reward model: the K-wise loss's pairs and groups, the normalisation's sign
    "kwise_margin_sign": ("rlhf/algos/preference.py", "-F.logsigmoid(scores[better] - scores[worse] - margin)",
                          "-F.logsigmoid(scores[better] - scores[worse] + margin)", "tests/unit/test_reward_loss.py"),
    "kwise_pair_mean": ("rlhf/algos/preference.py", "return (total / count.clamp(min=1))[count > 0].mean()",
                        "return per_pair.mean()", "tests/unit/test_reward_loss.py"),
    "rm_norm_bias_sign": ("rlhf/models/reward.py", '{"bias": -mean, "raw_mean": mean', '{"bias": mean, "raw_mean": mean',
                          "tests/unit/test_reward_loss.py"),
    # DPO: the loss type passed to trl
    "dpo_loss_type": ("rlhf/stages/dpo.py", '{"loss_type": [o.loss_type]}', '{"loss_type": ["sigmoid"]}',
                      "tests/unit/test_dpo.py"),
    # the prompt stream's resume position, lineage's fingerprint, prompt truncation
    "stream_next_pass_same_order": ("rlhf/data/stream.py", "self.at.epoch_seed, order = self.at.epoch_seed + 1, None",
                                    "self.at.epoch_seed, order = self.at.epoch_seed, None", "tests/unit/test_stream.py"),
    "fingerprint_ignores_data": ("rlhf/lineage.py", 'return ("seed", "model", "data", STAGES[stage].section',
                                 'return ("seed", "model", STAGES[stage].section', "tests/unit/test_loop.py"),
    "truncate_keeps_oldest": ("rlhf/data/formatting.py", "        turns = turns[1:]\n        while len(turns) > 1",
                              "        turns = turns[:-1]\n        while len(turns) > 1", "tests/unit/test_real_data.py"),
    # the verifier (data=ifeval): IFEval's strict reading against its loose one, the reward's
    # all-or-nothing credit, instruction-level accuracy pooled over instructions (not prompts)
    "verifier_strict_reads_loose": ("rlhf/data/instructions.py", "tuple(r.strict_pass for r in results)",
                                    "tuple(r.loose_pass for r in results)", "tests/unit/test_instructions.py"),
    "verifier_reward_any": ("rlhf/sampling/reward.py", 'float(all(followed)) if self.credit == "all"',
                            'float(any(followed)) if self.credit == "all"', "tests/unit/test_instructions.py"),
    "instruction_level_per_prompt": ("rlhf/stages/compare/stats.py", '"mean": float(followed.sum() / given.sum())',
                                     '"mean": float((followed / given).mean())', "tests/unit/test_instructions.py"),
}

IGNORE = shutil.ignore_patterns(".git", ".venv*", "runs", "*.egg-info", "__pycache__", ".pytest_cache", "gpu_check_out")


def check_sites() -> None:
    """Every mutant's code must occur exactly once: a refactor that moves it must move the mutant."""
    for name, (path, old, new, _) in MUTANTS.items():
        count = (ROOT / path).read_text().count(old)
        if count != 1 or old == new:
            raise SystemExit(f"mutant {name}: {path} holds its code {count} times (must be once); update tests/mutants.py")


def run(name: str, tree: Path, fast: list[str]) -> dict:
    path, old, new, killer = MUTANTS[name]
    original = (tree / path).read_text()
    (tree / path).write_text(original.replace(old, new))
    start = time.monotonic()
    try:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                              "--durations=0", "--timeout=600", killer, *fast], cwd=tree, env=env,
                             capture_output=True, text=True)
    finally:
        (tree / path).write_text(original)
    failed = [line.split(" ")[1] for line in out.stdout.splitlines() if line.startswith("FAILED ")]
    return {"mutant": name, "file": path, "killed": out.returncode != 0, "by": failed[:1],
            "should_kill": killer, "seconds": round(time.monotonic() - start, 1),
            **({"error": out.stdout[-1500:]} if out.returncode not in (0, 1) else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    check_sites()
    if args.list:
        print("\n".join(f"{n}: {m[0]} (should be killed by {m[3]})" for n, m in MUTANTS.items()))
        return
    unknown = set(args.names) - set(MUTANTS)
    if unknown:
        raise SystemExit(f"unknown mutants: {', '.join(sorted(unknown))} (--list)")
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=IGNORE)
        # the unmutated tree must pass, or every mutant would look killed
        baseline = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                                   "tests/unit"], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                                  capture_output=True, text=True)
        if baseline.returncode != 0:
            raise SystemExit("the unmutated tree fails its unit tests:\n" + baseline.stdout[-3000:])
        results = []
        for name in args.names or MUTANTS:
            results.append(run(name, tree, ["tests/unit"]))
            print(json.dumps(results[-1]), flush=True)
    survivors = [r["mutant"] for r in results if not r["killed"]]
    print(json.dumps({"mutants": len(results), "killed": len(results) - len(survivors), "survivors": survivors}))
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
