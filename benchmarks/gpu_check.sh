#!/usr/bin/env bash
# The GPU check: what a cluster user runs first, unattended, on one CUDA machine, in under 9 minutes (8.4 minutes of limits).
# One JSON line per figure, on stdout and in <out>/gpu_check.jsonl; a check that fails writes its
# line with "ok": false and the end of its log, and the others still run.
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out DIR] [--python PY]
#
# Needs: a Python with a CUDA build of PyTorch (and transformers, if present, >= 4.56 and < 6).
# The other packages the project needs (trl, hydra-core, omegaconf, antlr4-python3-runtime,
# deepspeed, datasets, accelerate, peft, safetensors, tensorboard, matplotlib, rich, tqdm and what
# they depend on) are installed from DIR when missing, offline (pip --no-index); make the folder on
# a machine with the package index: `bash benchmarks/gpu_wheels.sh DIR [--python-version 3.11]`.
# The checks, in order (seconds: their time limits):
#   env          torch, CUDA, the GPU, bf16 support, the packages' versions                      30
#   tests        the CPU-faked device tests, now on the real device (tests/unit/test_compute_settings.py)  45
#   pipeline     the tiny pipeline end to end in bf16 (sft -> rm -> ppo -> compare, a smaller budget) 120
#   ppo, grpo    benchmarks/{ppo,grpo}_throughput.py at a GPU-sized setting, bf16; gradient
#                checkpointing off and on (peak GPU memory, episodes/s)                          4 x 50
#   grpo_vllm    grpo_throughput.py with the vLLM rollout engine, where vLLM is installed           60
#   zero2        stage 3 under DeepSpeed ZeRO-2 on the one GPU, 4 updates                         50
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WHEELS="" OUTDIR="${OUT:-$ROOT/gpu_check_out}" PY="" REHEARSAL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$2; shift 2 ;;
        --out) OUTDIR=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        # the script's own test, on a machine without a GPU: every check, on the CPU, at toy sizes
        --cpu-rehearsal) REHEARSAL=1; shift ;;
        *) echo "gpu_check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
case "$PY" in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; *) PY=$(command -v "$PY") ;; esac
DTYPE=bfloat16 DEVICE=cuda
BUDGET="data.toy.num_prompts=4000 sft.max_steps=300 rm.max_steps=150 ppo.updates=20 compare.prompts=128"
SETTING="--vocab 32000 --hidden 1024 --intermediate 2816 --layers 8 --heads 16 --prompt-len 64 --response-len 128 --batch 64 --updates 3"
LIMIT_SCALE=1
if [ "$REHEARSAL" = 1 ]; then
    LIMIT_SCALE=4  # a shared 2-core CI machine, not a GPU: the same steps, more time for each
    DTYPE=float32 DEVICE=cpu
    BUDGET="data.toy.num_prompts=1000 sft.max_steps=20 rm.max_steps=10 ppo.updates=2 ppo.eval_prompts=8 compare.prompts=8 sft.gold_eval_prompts=8"
    SETTING="--updates 1 --batch 8 --prompt-len 8 --response-len 8"
fi
mkdir -p "$OUTDIR/logs"
JSONL="$OUTDIR/gpu_check.jsonl"
: > "$JSONL"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

emit() { echo "$1" | tee -a "$JSONL"; }

# check NAME SECONDS COMMAND...: runs it under a time limit; its stdout's JSON lines are the
# figures (tagged with the check's name); its stderr goes to logs/NAME.log.
check() {
    local name=$1 limit=$(($2 * LIMIT_SCALE)); shift 2
    local log="$OUTDIR/logs/$name.log" start=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" > "$log.out" 2> "$log"
    rc=$?
    local found=0 tagged
    while IFS= read -r line; do
        tagged=$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"check": sys.argv[2], **d}))' \
                 "$line" "$name" 2>/dev/null) && { emit "$tagged"; found=1; }
    done < "$log.out"
    if [ $rc -ne 0 ] || [ $found -eq 0 ]; then
        emit "$("$PY" -c 'import json,sys; print(json.dumps({"check": sys.argv[1], "ok": False, "rc": int(sys.argv[2]), "seconds": int(sys.argv[3]), "timed_out": sys.argv[2] in ("124", "137"), "log_tail": open(sys.argv[4], errors="replace").read()[-1500:]}))' "$name" "$rc" "$((SECONDS - start))" "$log")"
    fi
}

# ---- packages: what is missing comes from the wheel folder ----
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"trl": "trl", "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
        "deepspeed": "deepspeed", "datasets": "datasets", "accelerate": "accelerate", "peft": "peft",
        "safetensors": "safetensors", "tensorboard": "tensorboard", "matplotlib": "matplotlib", "rich": "rich",
        "tqdm": "tqdm", "transformers": "transformers", "pytest": "pytest", "setuptools": "setuptools"}
print(" ".join(dist for module, dist in need.items() if importlib.util.find_spec(module) is None))
EOF
)
if [ -n "$missing" ]; then
    if [ -z "$WHEELS" ]; then
        emit "{\"check\": \"install\", \"ok\": false, \"missing\": \"$missing\", \"hint\": \"pass --wheels DIR (made by benchmarks/gpu_wheels.sh) or pip install them\"}"
        exit 1
    fi
    # --no-build-isolation: deepspeed comes as a source archive and builds against the torch
    # present, with the setuptools installed first
    { "$PY" -m pip install --no-index --find-links "$WHEELS" setuptools &&
      DS_BUILD_OPS=0 "$PY" -m pip install --no-index --find-links "$WHEELS" --no-build-isolation $missing
    } > "$OUTDIR/logs/install.log" 2>&1
    rc=$?
    emit "{\"check\": \"install\", \"ok\": $( [ $rc = 0 ] && echo true || echo false ), \"installed\": \"$missing\", \"from\": \"$WHEELS\"}"
    [ $rc = 0 ] || { tail -20 "$OUTDIR/logs/install.log" >&2; exit 1; }
fi

check env 30 "$PY" - <<'EOF'
import importlib.metadata as md, json, torch
gpu = torch.cuda.is_available()
versions = {d: md.version(d) for d in ("torch", "transformers", "trl", "deepspeed", "accelerate", "peft", "datasets")}
print(json.dumps({"ok": gpu, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
                  "gpu": torch.cuda.get_device_name(0) if gpu else None,
                  "bf16": gpu and torch.cuda.is_bf16_supported(),
                  "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
                  "versions": versions}))
EOF

# (the rehearsal leaves this one out: the suite that runs the rehearsal runs these files itself)
if [ "$REHEARSAL" = 1 ]; then
    emit '{"check": "tests", "skipped": "rehearsal: the suite runs these test files itself"}'
else
check tests 45 "$PY" - <<'EOF'
import json, subprocess, sys, time
t = time.time()
p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_compute_settings.py",
                    "tests/unit/test_ppo_rollout.py"], capture_output=True, text=True)
print(p.stdout[-3000:], file=sys.stderr)
print(json.dumps({"ok": p.returncode == 0, "summary": p.stdout.strip().splitlines()[-1], "seconds": round(time.time() - t, 1)}))
EOF
fi

# The tiny pipeline in bf16, in $OUTDIR/runs (a smaller budget than the default: 2 minutes at most)
mkdir -p "$OUTDIR/work"
check pipeline 120 bash -c "cd '$OUTDIR/work' && '$PY' - <<'EOF'
import json, subprocess, sys, time
t = time.time()
args = ['run=gpu_check', 'logger=none', 'model.dtype=$DTYPE', 'compare.modes=[sampled]', *'$BUDGET'.split()]
p = subprocess.run([sys.executable, '-m', 'rlhf.cli', 'stage=pipeline', *args], stdout=sys.stderr)
try:
    sampled = json.load(open('runs/gpu_check/compare/results.json'))['modes']['sampled']
    gold = {name: row['gold_score'] for name, row in sampled.items()}
except Exception as e:
    gold = f'not read: {e}'
print(json.dumps({'ok': p.returncode == 0, 'seconds': round(time.time() - t, 1), 'gold_score': gold}))
EOF"

GPU_SETTING="--device $DEVICE --dtype $DTYPE $SETTING"
check ppo 50 "$PY" benchmarks/ppo_throughput.py $GPU_SETTING
check ppo_checkpointing 50 "$PY" benchmarks/ppo_throughput.py $GPU_SETTING --gradient-checkpointing
check grpo 50 "$PY" benchmarks/grpo_throughput.py $GPU_SETTING --group 4
check grpo_checkpointing 50 "$PY" benchmarks/grpo_throughput.py $GPU_SETTING --group 4 --gradient-checkpointing

# The vLLM rollout engine (ppo.rollout_engine=vllm), where vLLM is installed in this Python
# (docs/vllm.md); eager, so that the engine starts in seconds rather than compiling for minutes
if "$PY" -c "import vllm" > /dev/null 2>&1; then
    check grpo_vllm 60 "$PY" benchmarks/grpo_throughput.py $GPU_SETTING --group 4 --rollout-engine vllm --vllm-enforce-eager
else
    emit '{"check": "grpo_vllm", "skipped": "vllm is not installed in this Python (make setup-vllm VLLM_PACKAGE=vllm: docs/vllm.md)"}'
fi

check zero2 50 bash -c "cd '$OUTDIR/work' && '$PY' - <<'EOF'
import json, subprocess, sys, time
t = time.time()
p = subprocess.run([sys.executable, '-m', 'rlhf.cli', 'run=gpu_check', 'logger=none', 'model.dtype=$DTYPE',
                    *'$BUDGET'.split(), 'stage=ppo', 'deepspeed=zero2', 'variant=zero2', 'ppo.updates=4', 'ppo.eval_prompts=32'],
                   stdout=sys.stderr)
last = {}
try:
    last = json.load(open('runs/gpu_check/ppo@zero2/manifest.json'))['metrics'].get('last_update', {})
except Exception as e:
    last = {'manifest': f'not read: {e}'}
print(json.dumps({'ok': p.returncode == 0, 'seconds': round(time.time() - t, 1), 'last_update': last}))
EOF"

echo "gpu_check: $(grep -c '"ok": false' "$JSONL") of $(wc -l < "$JSONL") lines failed; figures in $JSONL, logs in $OUTDIR/logs" >&2
