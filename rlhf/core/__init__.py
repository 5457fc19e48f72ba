"""The floor every layer stands on: run directories and atomic writes (artifacts), ranks and
DeepSpeed (distributed), SIGTERM/SIGUSR1 handling (preemption), metrics (tracking) and the small
tensor helpers (ops). Nothing here imports from a layer above it."""
