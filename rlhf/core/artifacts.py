"""Run directories, manifests and atomic writes.

Each stage writes to `runs/<run>/<stage>/`: the resolved `config.yaml`, and a `manifest.json`
with what went in (inputs, data counts), what came out (metrics) and what produced it (package
versions, git commit). Files are written to a temporary name and renamed, so a reader (or a
resumed job) never sees half a file. Only the main process writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf.core.distributed import barrier, consolidated_state_dict, is_main_process, module_of

PACKAGES = ("rlhf", "torch", "transformers", "trl", "datasets", "accelerate", "deepspeed",
            "hydra-core", "tokenizers", "safetensors")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; others on a cluster need to read runs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The failures of the disk under a run rather than of the run: no space, a quota, a read-only or
# unwritable folder. The libraries that write checkpoints (safetensors, torch) wrap the OSError
# in errors of their own, so the message is read too.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "a read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}
_STORAGE_TEXT = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
                 "disk quota exceeded": errno.EDQUOT, "read-only file system": errno.EROFS,
                 "os error 30": errno.EROFS}


def storage_problem(error: BaseException) -> tuple[str, str | None] | None:
    """(what is wrong, the path if known) when `error`, or an error it was raised from, is the
    disk refusing a write; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[error.errno], error.filename
        text = str(error).lower()
        for needle, code in _STORAGE_TEXT.items():
            if needle in text:
                return _STORAGE_ERRNOS[code], None
        error = error.__cause__ or error.__context__
    return None


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_of(path: Path) -> str:
    """Content hash of a file, or of every file under a folder (names included)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_state() -> dict[str, Any]:
    """Commit of the checkout the package runs from (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "dirty": bool(git("status", "--porcelain")) if commit else None}


class StageRun:
    """The run directory of one stage and its manifest, finished whether the stage succeeds or not.

        with StageRun(cfg, composed) as run:
            run.manifest["data"] = ...
            run.metrics["eval_accuracy"] = ...
    """

    def __init__(self, stage_dir: Path, composed: DictConfig):
        self.dir = stage_dir
        self.composed = composed
        self.metrics: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}

    def __enter__(self) -> "StageRun":
        self._start = time.time()
        reset_peak_rss()
        self.manifest.update({
            "stage": self.dir.name,
            "run": self.dir.parent.name,
            "status": "running",
            "command": sys.argv,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._start)),
            "inputs": {},
            "metrics": self.metrics,
            "versions": versions(),
            "git": git_state(),
        })
        if is_main_process():
            write_atomic(self.dir / "config.yaml", OmegaConf.to_yaml(self.composed, resolve=True))
            self.save()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.manifest["status"] = ("completed" if exc_type is None else
                                   "preempted" if exc_type.__name__ == "Preempted" else "failed")
        if exc is not None:
            self.manifest["error"] = f"{exc_type.__name__}: {exc}"
        self.manifest["duration_s"] = round(time.time() - self._start, 3)
        self.manifest["peak_rss_mb"] = peak_rss_mb()
        self.save()

    def save(self) -> None:
        if is_main_process():
            write_json(self.dir / "manifest.json", self.manifest)


def reset_peak_rss() -> None:
    """Starts the peak RSS afresh (Linux: /proc/self/clear_refs), so that a stage's manifest
    holds its own peak, not the process's (a pipeline, a multirun's points in one process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the process's peak then


def peak_rss_mb() -> float:
    """This rank's peak resident memory since the last reset_peak_rss (else since it started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kB


def save_final(model, tokenizer, path: Path) -> None:
    """Hugging Face format (safetensors) into <path>.tmp, then renamed: a `final/` folder that
    exists is complete. `model` may be a DeepSpeed engine: under ZeRO-3 its shards are gathered
    onto rank 0 first (every rank must call this). Only rank 0 writes. A LoRA (peft) model goes
    twice: its adapter to <path>_adapter/, then merged into its base as a plain checkpoint in
    <path>/, which every later stage and plain `from_pretrained` load. (Merging changes the model
    in place: call this last.)"""
    state = consolidated_state_dict(model)
    if is_main_process():
        module = module_of(model)
        if hasattr(module, "merge_and_unload"):  # LoRA, never under ZeRO-3 (config_check refuses it)
            _save_folder(lambda tmp: (module.save_pretrained(tmp), tokenizer.save_pretrained(tmp)),
                         path.with_name(path.name + "_adapter"))
            module, state = module.merge_and_unload(), None
        _save_folder(lambda tmp: (module.save_pretrained(tmp, state_dict=state, safe_serialization=True),
                                  tokenizer.save_pretrained(tmp)), path)
    barrier()  # no rank reads the folder before it is complete


def _save_folder(write, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:  # a full disk, say: no half-written folder left beside the run
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
