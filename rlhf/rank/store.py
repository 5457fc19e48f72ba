"""The labels of the web front end, in SQLite beside the file being labelled
(`comparisons.jsonl.labels.sqlite`), and their export into that file.

SQLite because it is durable the moment a write is acknowledged (a label the server answered
200 to survives the server being killed; WAL, synchronous=FULL), serialises concurrent writers,
and ships with Python. Nothing is ever updated in place without a trace: every submit, skip and
undo is appended to `events` too.

Who labels what: labellers pull. Each prompt needs `copies` labels (1, or `overlap_copies` for
the share `overlap` of prompts chosen by a hash of the prompt, so the same prompts on every
restart); a labeller gets, in file order, the first prompt they have not labelled or skipped
that still needs a label nobody else is working on. The prompt they were given and have not
answered stays theirs, so a reload or a restart shows it again: work resumes where it stopped.
A claim older than CLAIM_SECONDS no longer holds the prompt back from others.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from rlhf.core.artifacts import write_atomic
from rlhf.rank import collected
from rlhf.rank.agreement import agreement, mean_rank

CLAIM_SECONDS = 15 * 60

# InstructGPT's per-answer metadata (Ouyang et al. 2022, table 3), as flags a labeller ticks.
FLAGS = {
    "fails_instruction": "fails to follow the instruction",
    "hallucination": "hallucination (made-up facts)",
    "inappropriate": "inappropriate for a customer assistant",
    "harmful": "harmful content or advice",
    "sexual": "sexual content",
    "violent": "violent content",
    "denigrates": "denigrates a protected class",
    "opinion": "expresses an opinion",
    "moral_judgment": "expresses a moral judgment",
}
RATINGS = range(1, 8)  # overall quality, 1 (worst) to 7 (best)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labellers (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS items (idx INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, copies INTEGER NOT NULL,
    labelled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS labels (key TEXT NOT NULL, labeller TEXT NOT NULL, ranks TEXT NOT NULL,
    ratings TEXT NOT NULL, flags TEXT NOT NULL, seconds REAL, at REAL NOT NULL, PRIMARY KEY (key, labeller));
CREATE TABLE IF NOT EXISTS skips (key TEXT NOT NULL, labeller TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (key, labeller));
CREATE TABLE IF NOT EXISTS claims (key TEXT NOT NULL, labeller TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (key, labeller));
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
    labeller TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, payload TEXT);
CREATE INDEX IF NOT EXISTS labels_by_labeller ON labels (labeller);
CREATE INDEX IF NOT EXISTS skips_by_labeller ON skips (labeller);
CREATE INDEX IF NOT EXISTS claims_by_key ON claims (key);
"""


class LabelError(ValueError):
    """A label the store refuses: the message says which field and why (the API answers 422)."""


def db_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".labels.sqlite")


def shared(key: str, overlap: float) -> bool:
    """Whether a prompt goes to several labellers: a fixed share `overlap` of prompts, by hash."""
    return int(hashlib.sha256(f"overlap:{key}".encode()).hexdigest()[:8], 16) / 16**8 < overlap


class LabelStore:
    def __init__(self, db: Path, records: list[dict], *, overlap: float = 0.0, overlap_copies: int = 2):
        self.records = {collected.key(r): r for r in records}
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._transaction():
            known = {k for (k,) in self._db.execute("SELECT key FROM items")}
            # Prompts queued before but gone from the file now (dropped by hand, say) leave the
            # queue; their labels stay in the database and are counted in the summary.
            self.missing = sorted(known - set(self.records))
            self._db.executemany("DELETE FROM items WHERE key = ?", [(k,) for k in self.missing])
            start = self._db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM items").fetchone()[0]
            new = [k for k, r in self.records.items() if k not in known and collected.unranked(r)]
            self._db.executemany("INSERT INTO items (idx, key, copies) VALUES (?, ?, ?)",
                                 [(start + i, k, overlap_copies if shared(k, overlap) else 1) for i, k in enumerate(new)])
            self._tokens = dict(self._db.execute("SELECT name, token FROM labellers"))

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Transaction(self._lock, self._db)

    # ---- labellers ------------------------------------------------------------------------------

    def add_labellers(self, tokens: dict[str, str]) -> None:
        """Adds labellers by name; a known name keeps its token unless a new one is given here."""
        with self._transaction():
            for name, token in tokens.items():
                self._db.execute("INSERT INTO labellers VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET token = excluded.token",
                                 (name, token))
            self._tokens.update(tokens)

    def labellers(self) -> dict[str, str]:
        """name -> token (kept in memory too: every request looks its token up)."""
        return dict(sorted(self._tokens.items()))

    # ---- the work: next, submit, skip, undo --------------------------------------------------

    def next_item(self, labeller: str) -> str | None:
        now = time.time()
        with self._transaction():
            mine = self._db.execute(
                "SELECT key FROM claims WHERE labeller = ? ORDER BY at LIMIT 1", (labeller,)).fetchone()
            if mine:
                return mine[0]
            for skipped_too in (False, True):  # skipped prompts come back once nothing else is left
                row = self._db.execute(f"""
                    SELECT i.key FROM items i
                    WHERE i.labelled < i.copies
                      AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.key = i.key AND l.labeller = :me)
                      {"" if skipped_too else "AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.key = i.key AND s.labeller = :me)"}
                      AND i.labelled + (SELECT COUNT(*) FROM claims c WHERE c.key = i.key AND c.at > :fresh) < i.copies
                    ORDER BY i.idx LIMIT 1""", {"me": labeller, "fresh": now - CLAIM_SECONDS}).fetchone()
                if row:
                    self._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (row[0], labeller, now))
                    return row[0]
            return None

    def submit(self, labeller: str, key: str, ranks: list[int], ratings: list[int],
               flags: list[list[str]]) -> None:
        self._check(key, ranks, ratings, flags)
        now = time.time()
        with self._transaction():
            claimed = self._db.execute("SELECT at FROM claims WHERE key = ? AND labeller = ?", (key, labeller)).fetchone()
            label = (json.dumps(ranks), json.dumps(ratings), json.dumps(flags), now - claimed[0] if claimed else None)
            if self._label(key, labeller) is None:  # a second submit of the same prompt replaces the first
                self._db.execute("UPDATE items SET labelled = labelled + 1 WHERE key = ?", (key,))
            self._db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)", (key, labeller, *label, now))
            self._db.execute("DELETE FROM claims WHERE key = ? AND labeller = ?", (key, labeller))
            self._db.execute("DELETE FROM skips WHERE key = ? AND labeller = ?", (key, labeller))
            self._event(now, labeller, "label", key, {"ranks": ranks, "ratings": ratings, "flags": flags})

    def skip(self, labeller: str, key: str) -> None:
        if key not in self.records:
            raise LabelError(f"field 'key': no prompt {key!r} in the file being labelled")
        now = time.time()
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO skips VALUES (?, ?, ?)", (key, labeller, now))
            self._db.execute("DELETE FROM claims WHERE key = ? AND labeller = ?", (key, labeller))
            self._event(now, labeller, "skip", key, None)

    def undo(self, labeller: str) -> dict | None:
        """Takes back the labeller's last label or skip: that prompt is theirs to do again (the
        label returned, so the page can show it as it was). None when there is nothing to undo."""
        now = time.time()
        with self._transaction():
            last = self._db.execute("""
                SELECT key, at, 'label' FROM labels WHERE labeller = :me UNION ALL
                SELECT key, at, 'skip' FROM skips WHERE labeller = :me ORDER BY at DESC LIMIT 1""",
                                    {"me": labeller}).fetchone()
            if last is None:
                return None
            key, _, kind = last
            previous = self._label(key, labeller) if kind == "label" else None
            if kind == "label":
                self._db.execute("UPDATE items SET labelled = labelled - 1 WHERE key = ?", (key,))
            self._db.execute(f"DELETE FROM {'labels' if kind == 'label' else 'skips'} WHERE key = ? AND labeller = ?",
                             (key, labeller))
            self._db.execute("DELETE FROM claims WHERE labeller = ?", (labeller,))
            self._db.execute("INSERT INTO claims VALUES (?, ?, ?)", (key, labeller, now))
            self._event(now, labeller, "undo_" + kind, key, previous)
            return {"key": key, "undone": kind, "label": previous}

    def _check(self, key: str, ranks, ratings, flags) -> None:
        if key not in self.records:
            raise LabelError(f"field 'key': no prompt {key!r} in the file being labelled")
        k = len(self.records[key]["responses"])
        for name, values in (("ranks", ranks), ("ratings", ratings), ("flags", flags)):
            if len(values) != k:
                raise LabelError(f"field '{name}': {len(values)} values for {k} answers")
        if sorted(set(ranks)) != list(range(len(set(ranks)))):
            raise LabelError("field 'ranks': ranks must be 0 (best), 1, ... with no gap; equal ranks are ties")
        if len(set(ranks)) < 2:
            raise LabelError("field 'ranks': every answer tied, so nothing to learn; skip the prompt instead")
        if any(r not in RATINGS for r in ratings):
            raise LabelError("field 'ratings': each rating is 1 (worst) to 7 (best)")
        unknown = {f for answer in flags for f in answer} - set(FLAGS)
        if unknown:
            raise LabelError(f"field 'flags': unknown flag(s) {sorted(unknown)}; known: {sorted(FLAGS)}")

    def _label(self, key: str, labeller: str) -> dict | None:
        row = self._db.execute("SELECT ranks, ratings, flags, seconds FROM labels WHERE key = ? AND labeller = ?",
                               (key, labeller)).fetchone()
        if row is None:
            return None
        return {"ranks": json.loads(row[0]), "ratings": json.loads(row[1]), "flags": json.loads(row[2]),
                "seconds": row[3]}

    def _event(self, at: float, labeller: str, kind: str, key: str, payload) -> None:
        self._db.execute("INSERT INTO events (at, labeller, kind, key, payload) VALUES (?, ?, ?, ?, ?)",
                         (at, labeller, kind, key, None if payload is None else json.dumps(payload)))

    # ---- what was done --------------------------------------------------------------------------

    def labels(self) -> dict[str, dict[str, dict]]:
        """Every label: {prompt key: {labeller: {ranks, ratings, flags, seconds, at}}}."""
        with self._lock:
            rows = self._db.execute("SELECT key, labeller, ranks, ratings, flags, seconds, at FROM labels "
                                    "ORDER BY key, labeller").fetchall()
        out: dict[str, dict[str, dict]] = {}
        for key, labeller, ranks, ratings, flags, seconds, at in rows:
            out.setdefault(key, {})[labeller] = {"ranks": json.loads(ranks), "ratings": json.loads(ratings),
                                                 "flags": json.loads(flags), "seconds": seconds, "at": at}
        return out

    def progress(self, labeller: str) -> dict:
        with self._lock:
            total, done = self._db.execute("SELECT COUNT(*), COALESCE(SUM(labelled >= copies), 0) FROM items").fetchone()
            mine = self._db.execute("SELECT COUNT(*) FROM labels WHERE labeller = ?", (labeller,)).fetchone()[0]
            skipped = self._db.execute("SELECT COUNT(*) FROM skips WHERE labeller = ?", (labeller,)).fetchone()[0]
        return {"done": done, "total": total, "mine": mine, "skipped": skipped}

    def summary(self) -> dict:
        labels = self.labels()
        per: dict[str, dict] = {}
        with self._lock:
            skips = dict(self._db.execute("SELECT labeller, COUNT(*) FROM skips GROUP BY labeller"))
            names = [n for (n,) in self._db.execute("SELECT name FROM labellers ORDER BY name")]
            total, multi = self._db.execute("SELECT COUNT(*), COALESCE(SUM(copies > 1), 0) FROM items").fetchone()
        for name in names:
            seconds = sorted(l["seconds"] for by in labels.values() for who, l in by.items()
                             if who == name and l["seconds"] is not None)
            per[name] = {"labels": sum(name in by for by in labels.values()), "skips": skips.get(name, 0),
                         "median_seconds": seconds[len(seconds) // 2] if seconds else None}
        return {"prompts": total, "prompts_for_several": multi, "labelled": len(labels),
                "labels": sum(len(by) for by in labels.values()), "labellers": per,
                "agreement": agreement({k: {who: l["ranks"] for who, l in by.items()} for k, by in labels.items()})}


class _Transaction:
    """One lock-held SQLite transaction: every write of one request commits together or not at all."""

    def __init__(self, lock: threading.Lock, db: sqlite3.Connection):
        self.lock, self.db = lock, db

    def __enter__(self):
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        try:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()


def export(path: Path, store: LabelStore) -> dict:
    """Writes every label into the file (atomically), in the format `rlhf-rank` and the RM read:
    each labelled prompt's `rank`s are the labellers' aggregate (mean rank; data.multi_label=each
    reads each label instead), `labeller` names them, `labels` keeps each one with its ratings,
    flags and time. Prompts nobody labelled stay as they were. Returns the summary, which is also
    written beside the file (`<file>.summary.json`)."""
    records = collected.read(path)
    labels = store.labels()
    written = 0
    for record in records:
        by = labels.get(collected.key(record))
        if not by:
            continue
        aggregate = mean_rank([l["ranks"] for l in by.values()])
        for response, rank in zip(record["responses"], aggregate):
            response["rank"] = rank
        record["labeller"] = ", ".join(by)
        record["labels"] = [{"labeller": who, **{k: l[k] for k in ("ranks", "ratings", "flags", "seconds")}}
                            for who, l in by.items()]
        written += 1
    collected.save(path, records)
    summary = {**store.summary(), "exported": written, "file": str(path)}
    write_atomic(path.with_name(path.name + ".summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary
