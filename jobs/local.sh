#!/usr/bin/env bash
# The chain of jobs/submit.sh on one machine, one stage after another, each under torchrun:
#   jobs/local.sh [--nproc N] [--stages "sft rm ppo compare"] [overrides]
# (--stages defaults to the pipeline's stages as the stage registry lists them: `rlhf --list-stages`)
# (`rlhf stage=pipeline` does the same in one process and skips stages that are up to date.)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
nproc=1
stages=""
while [ $# -gt 0 ]; do
    case "$1" in
        --nproc) nproc=$2; shift 2 ;;
        --stages) stages=$2; shift 2 ;;
        *) break ;;
    esac
done
# (a later round of the feedback loop, loop.round=<n> among the overrides, lists its own stages)
[ -n "$stages" ] || stages=$("$python" -m rlhf.cli --list-stages "$@")
for stage in $stages; do
    echo "== $stage"
    "$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m rlhf.cli "stage=$stage" "$@"
done
