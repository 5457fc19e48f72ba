#!/usr/bin/env bash
# Submit stages as a chain of Slurm jobs, each starting only when the one before succeeded
# (afterok); a failed stage cancels the ones after it. Prints "<stage>: <job id>" per stage.
#   jobs/submit.sh [--dry-run] [--stages "sft rm ppo compare"] [--rounds "1 2 3"] [--sbatch "<sbatch options>"] [overrides]
# e.g. jobs/submit.sh --sbatch "--nodes 2 --partition gpu" experiment=llama3_1_8b_hh_zero3
# GPUS_PER_NODE (default 8; 0 on CPU-only nodes) sets --gpus-per-node and torchrun's ranks per node.
# --stages defaults to the pipeline's stages, in order, as the stage registry lists them
# (`rlhf --list-stages`, run with $PYTHON, default the checkout's .venv/bin/python).
# --rounds chains rounds of the feedback loop, each with loop.round=<n> and (without --stages)
# its own pipeline: sft rm ppo compare in round 1, collect rm ppo compare after (docs/collect.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
stages=""
rounds=""
dry_run=0
extra=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --stages) stages=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --sbatch) extra=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
gpus=${GPUS_PER_NODE:-8}
resources=()
[ "$gpus" -gt 0 ] && resources+=(--gpus-per-node "$gpus")
previous=""
for round in ${rounds:-1}; do
    round_args=()
    name=""
    [ -n "$rounds" ] && round_args=("loop.round=$round") && name="round_$round/"
    these=$stages
    [ -n "$these" ] || these=$("${PYTHON:-$here/../.venv/bin/python}" -m rlhf.cli --list-stages "${round_args[@]}" "$@")
    for stage in $these; do
        after=()
        [ -n "$previous" ] && after=(--dependency "afterok:$previous" --kill-on-invalid-dep=yes)
        # shellcheck disable=SC2206  # $extra is a list of options, split on purpose
        cmd=(sbatch --parsable --job-name "rlhf-${name//\//-}$stage" "${resources[@]}" "${after[@]}" $extra
             "$here/stage.sbatch" "stage=$stage" "${round_args[@]}" "$@")
        if [ "$dry_run" = 1 ]; then
            echo "${cmd[*]}"
            previous="<job id of $name$stage>"
            continue
        fi
        id=$(GPUS_PER_NODE=$gpus "${cmd[@]}")
        id=${id%%;*}  # --parsable prints "<id>[;<cluster>]"
        echo "$name$stage: $id"
        previous=$id
    done
done
