"""One writer per run: `runs/<run>/.lock`, held while a command's stages write in the run
(`runs/<run>/.lock@<variant>` for a variant, e.g. one point of a sweep, which writes only its own
<stage>@<variant> folders: the points of a parallel sweep run side by side).

A second `rlhf ... run=<same>` started meanwhile (a resubmitted job, a typo in a sweep) would
resume from the same checkpoints and overwrite the same final/; it stops at once instead, with an
error naming the holder (exit code 2). The lock is an flock(2) on the file, which the kernel
releases when its process ends, however it ends (SIGKILL, OOM, a node's reboot for a local
disk): a lock left by a process that is gone is taken over, and said so. The file itself only
says who holds it: it is emptied on a clean release, so content found on taking the lock is the
trace of a holder that died.

Only the main process of a multi-rank job takes it; the others learn the outcome from it.

flock over a network file system depends on the mount: Linux's NFS client (v3 with the lock
manager, v4) emulates it with byte-range locks, which other hosts see (not under `nolock` or
`local_lock=flock`); Lustre honours it only when mounted with `-o flock` (with `-o localflock`
each host sees its own locks only). docs/cluster.md says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from rlhf.core import distributed
from rlhf.core.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, variant: str | None = None) -> Iterator[None]:
    """Holds `<run_dir>/.lock[@<variant>]` for the duration (every rank calls this; rank 0 takes
    the lock). Raises ConfigError, naming the holder, when another process holds it."""
    stream, refusal = None, None
    if distributed.is_main_process():
        try:
            stream = _acquire(Path(run_dir) / (f"{LOCK_NAME}@{variant}" if variant else LOCK_NAME))
        except ConfigError as e:
            refusal = str(e)
    # Every rank stops, not only the one that tried: the others would wait for it forever.
    refusals = [r for r in distributed.gather_objects([refusal]) if r]
    if refusals:
        raise ConfigError(refusals[0])
    try:
        yield
    finally:
        if stream is not None:
            _release(stream)


def _acquire(path: Path):
    """The open lock file, locked and naming this process; ConfigError when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # "a+": created if missing, never truncated before the lock is ours (the holder's record stays)
        stream = open(path, "a+", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot open {path} to lock the run: {e}. Check runs_dir= and its permissions") from None
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(stream)
        stream.close()
        raise ConfigError(f"run {path.parent.name!r} is in use: {path} is held by {holder}. Wait for it to end, "
                          "or choose another run= name") from None
    except OSError as e:  # a file system without flock (Lustre mounted without -o flock)
        stream.close()
        raise ConfigError(f"cannot lock {path}: {e}. Its file system does not support flock (Lustre: mount with "
                          "-o flock); choose a runs_dir= on one that does") from None
    before = _holder(stream) if _read(stream) else None
    if before:
        log.warning("%s: taking over the lock of %s, which is no longer running", path, before)
    stream.seek(0)
    stream.truncate()
    stream.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv}) + "\n")
    stream.flush()
    return stream


def _release(stream) -> None:
    """Empties the file, then unlocks. The file stays: removing it would let a process that has
    it open lock the removed file while another locks a new one, both "holding" the lock."""
    try:
        stream.seek(0)
        stream.truncate()
        stream.flush()
    finally:
        stream.close()  # closing the last descriptor releases the flock


def _read(stream) -> str:
    stream.seek(0)
    return stream.read().strip()


def _holder(stream) -> str:
    """The holder as its record names it: pid, host, start time and command."""
    text = _read(stream)
    try:
        record = json.loads(text)
        command = " ".join(shlex.quote(a) for a in record.get("command") or [])
        return (f"pid {record['pid']} on {record['host']} since {record['started']}"
                + (f" (`{command}`)" if command else ""))
    except (ValueError, KeyError, TypeError):
        # empty: the holder has locked it but not yet written its record (it is starting)
        return f"another process (its record reads {text[:200]!r})" if text else "another process, just starting"
