"""Kills at random moments: each stage is run once uninterrupted, then started again and SIGKILLed
(its whole process group, every rank) at --kills random moments, each time rerun with the same
command, and the rerun's result compared with the uninterrupted one. Also checked after each
kill: nothing the kill left is half-written where a rerun reads it (every JSON file parses, no
final/ without its weights), and the rerun takes over the dead run's lock. Prints one JSON line.

    python benchmarks/chaos.py                              # every stage, one process and 2-rank ZeRO-2
    python benchmarks/chaos.py --stages sft,ppo --modes single --kills 5

Equal means: bitwise for collect's file and compare's results; for a trained model, the largest
weight difference under 1% of how far training moved the weights (a resume replays the data
order and the random state, but not the exact floating-point order of an uninterrupted run),
as tests/e2e/test_resume.py asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

DATA = ["data.toy.num_prompts=2000"]
BASE = {"sft": ["sft.max_steps=30", "sft.gold_eval_prompts=0", "sft.eval_every_steps=0", "sft.learning_rate=1e-3"],
        "rm": ["rm.max_steps=30", "rm.eval_every_steps=0", "rm.normalize_max_demonstrations=32", "rm.wrong_digit_pairs=0"]}


def stage_args(base: Path) -> dict[str, list[str]]:
    sft, rm = f"{base}/sft/final", f"{base}/rm/final"
    train = lambda s, steps: [f"{s}.max_steps={steps}", f"{s}.save_every_steps=5", f"{s}.save_total_limit=3",
                              f"{s}.eval_every_steps=0"]
    stage3 = ["ppo.updates=8", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
              "ppo.save_every_updates=2", "ppo.eval_prompts=8", "ppo.eval_every_updates=0",
              f"ppo.policy_from={sft}", f"ppo.reward_from={rm}"]
    return {
        "sft": ["stage=sft", *train("sft", 40), "sft.gold_eval_prompts=0", "sft.learning_rate=1e-3"],
        "rm": ["stage=rm", *train("rm", 40), f"rm.init_from={sft}", "rm.normalize_max_demonstrations=32",
               "rm.wrong_digit_pairs=0", "rm.learning_rate=1e-4"],
        "ppo": ["stage=ppo", *stage3, "ppo.critic_warmup_updates=0"],
        "grpo": ["stage=ppo", "algo=grpo", *stage3],
        "dpo": ["stage=dpo", *train("dpo", 30), f"dpo.init_from={sft}", "dpo.gold_eval_prompts=0",
                "dpo.train_accuracy_pairs=0", "dpo.learning_rate=1e-4"],
        "bon_sft": ["stage=bon_sft", *train("bon_sft", 20), f"bon_sft.init_from={sft}", f"bon_sft.reward_from={rm}",
                    "bon_sft.prompts=32", "bon_sft.n=2", "bon_sft.gold_eval_prompts=0"],
        "collect": ["stage=collect", f"collect.policy={sft}", "collect.max_prompts=48"],
        "compare": ["stage=compare", f"compare.policies={{sft: {sft}, bon: 'bon:2'}}", f"compare.reward_from={rm}",
                    f"compare.reference_from={sft}",
                    "compare.prompts=24", "compare.samples_per_prompt=2", "compare.bootstrap_resamples=200"],
    }


OUTPUT = {"collect": "collect/comparisons.jsonl", "compare": "compare/results.json"}
STAGE_DIR = {"grpo": "ppo"}


def command(args: list[str], mode: str) -> list[str]:
    if mode == "single":
        return [sys.executable, "-m", "rlhf.cli", *DATA, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(29700 + os.getpid() % 200), "-m", "rlhf.cli", *DATA, *args, "deepspeed=zero2"]


def run(cwd: Path, args: list[str], mode: str, kill_at: float | None = None) -> tuple[int, str, float]:
    """(exit code, output, seconds); with kill_at, SIGKILL the process group that many seconds in."""
    start = time.monotonic()
    proc = subprocess.Popen(command(args, mode), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    if kill_at is not None:
        try:
            proc.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            # torchrun starts each rank in a session of its own, so killing its group leaves the
            # ranks running (and holding the output pipe): every descendant is killed by pid
            import psutil

            doomed = psutil.Process(proc.pid).children(recursive=True)
            os.killpg(proc.pid, signal.SIGKILL)
            for child in doomed:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
    out, _ = proc.communicate(timeout=1800)
    return proc.returncode, out, time.monotonic() - start


def result(folder: Path, stage: str):
    if stage in OUTPUT:
        return (folder / OUTPUT[stage]).read_bytes()
    return load_file(folder / STAGE_DIR.get(stage, stage) / "final" / "model.safetensors")


def same(stage: str, a, b, start) -> tuple[bool, bool, float]:
    """(bitwise, within tolerance, largest difference / movement)."""
    if isinstance(a, bytes):
        if stage == "compare":  # the figures, not when they were made
            a, b = (json.dumps(json.loads(x)["modes"], sort_keys=True).encode() for x in (a, b))
        return a == b, a == b, 0.0 if a == b else 1.0
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start) if start else 1.0
    return diff == 0.0, diff <= 0.01 * moved, diff / moved if moved else float("inf")


def half_written(folder: Path) -> list[str]:
    """What a rerun could trip over: JSON that does not parse, a final/ without its weights. A
    trainer checkpoint without its COMPLETE marker is skipped: resuming never reads one (it says
    so and takes the one before), so a file cut short there is expected, not a fault."""
    bad = []
    for path in folder.rglob("*.json"):
        checkpoint = next((p for p in path.parents if p.name.startswith("checkpoint-")), None)
        if checkpoint is not None and not (checkpoint / "COMPLETE").exists():
            continue
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            bad.append(str(path))
    for final in folder.rglob("final"):
        if final.is_dir() and not (final / "model.safetensors").exists():
            bad.append(str(final))
    return bad


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="sft,rm,ppo,grpo,dpo,bon_sft,collect,compare")
    p.add_argument("--modes", default="single,zero2")
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="chaos_"))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for stage in ("sft", "rm"):  # the inputs every later stage starts from
        code, out, _ = run(root, ["run=base", f"stage={stage}", *BASE[stage]], "single")
        assert code == 0, out[-3000:]
    base = root / "runs" / "base"
    everything = stage_args(base)
    report: dict = {}
    for mode in args.modes.split(","):
        for stage in args.stages.split(","):
            cmd = everything[stage]
            code, out, whole_s = run(root, [f"run=whole_{mode}_{stage}", *cmd], mode)
            if code != 0:
                report.setdefault(mode, {})[stage] = {"error": f"the uninterrupted run failed: {out[-1500:]}"}
                print(json.dumps({mode: {stage: report[mode][stage]}}), file=sys.stderr, flush=True)
                continue
            whole = result(root / "runs" / f"whole_{mode}_{stage}", stage)
            start = None if stage in OUTPUT else (
                None if stage == "sft" else load_file(base / "sft" / "final" / "model.safetensors"))
            row = {"uninterrupted_s": round(whole_s, 1), "kills": 0, "killed_mid_run": 0, "resumed_from_checkpoint": 0,
                   "lock_taken_over": 0, "half_written": 0, "reruns_ok": 0, "equal": 0, "bitwise": 0,
                   "max_rel_diff": 0.0, "kill_moments_s": []}
            for k in range(args.kills):
                for attempt in range(5):  # a run that ends before its moment is not a kill: draw again
                    name = f"cut_{mode}_{stage}_{k}_{attempt}"
                    moment = rng.uniform(0.1, 0.9) * whole_s
                    code, _, took = run(root, [f"run={name}", *cmd], mode, kill_at=moment)
                    row["finished_before_the_kill"] = row.get("finished_before_the_kill", 0) + (code == 0)
                    if code != 0:
                        break
                    whole_s = min(whole_s, took)  # a busy machine made the first run slow: aim within this one
                row["kills"] += 1
                row["kill_moments_s"].append(round(moment, 1))
                row["killed_mid_run"] += code != 0
                bad = half_written(root / "runs" / name)
                row["half_written"] += len(bad)
                if bad:
                    row.setdefault("half_written_paths", []).extend(bad[:3])
                code, out, _ = run(root, [f"run={name}", *cmd], mode)
                if code != 0:
                    row.setdefault("rerun_errors", []).append(out[-1500:])
                    continue
                row["reruns_ok"] += 1
                row["resumed_from_checkpoint"] += "resuming from" in out or "resumed from" in out
                row["lock_taken_over"] += "taking over the lock" in out
                bitwise, equal, rel = same(stage, whole, result(root / "runs" / name, stage), start)
                row["equal"] += equal
                row["bitwise"] += bitwise
                row["max_rel_diff"] = max(row["max_rel_diff"], round(rel, 6))
            report.setdefault(mode, {})[stage] = row
            print(json.dumps({mode: {stage: row}}), file=sys.stderr, flush=True)
    totals = {key: sum(r.get(key, 0) for m in report.values() for r in m.values())
              for key in ("kills", "killed_mid_run", "reruns_ok", "equal", "bitwise", "half_written", "lock_taken_over",
                          "resumed_from_checkpoint")}
    out = {"workdir": str(root), "seed": args.seed, "totals": totals, "report": report}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
