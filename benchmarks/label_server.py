"""The labelling server under load: N simulated labellers at once pull prompts and post labels
through the HTTP API of `rlhf-rank --web` until every prompt is labelled, then the server stops
(SIGINT: it writes the labels into the file) and the file is read back. Prints one JSON line:
labels acknowledged and exported, labels/s, request latency percentiles (ms).

--kill-after N: the server is SIGKILLed once N labels are acknowledged, started again on the same
file and database, and every acknowledged label is looked for in the export (`lost` counts the
missing ones: the durability check).

    python benchmarks/label_server.py                      # 20 labellers, 1,000 prompts
    python benchmarks/label_server.py --kill-after 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labellers", type=int, default=20)
    p.add_argument("--prompts", type=int, default=1000, help="prompts to label, one label each")
    p.add_argument("--answers", type=int, default=4, help="answers per prompt (K)")
    p.add_argument("--kill-after", type=int, default=None, help="SIGKILL the server after this many acknowledged labels")
    p.add_argument("--seed", type=int, default=0)
    return p


def write_file(path: Path, prompts: int, answers: int) -> None:
    rows = [{"prompt": f"prompt {i}: sort ascending: {i % 10} 3 1", "split": "rm",
             "responses": [{"text": f"answer {j} to prompt {i}", "rank": None} for j in range(answers)]}
            for i in range(prompts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def start(path: Path, tokens: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "rlhf.rank", str(path), "--web", "--port", str(port),
                               "--tokens", str(tokens)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        if server.poll() is not None:
            raise SystemExit(f"the server exited {server.returncode}: {server.stderr.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1)
            return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not answer within 60 s")


def simulate(port: int, tokens: dict[str, str], seed: int, on_ack=None) -> dict:
    """Every labeller in a thread of its own: next prompt, a random ranking with ties and
    ratings, post; until no prompt is left or the server is gone. Returns what was acknowledged
    and each request's latency."""
    acked: list[tuple[str, str]] = []
    latencies: dict[str, list[float]] = {"next": [], "label": []}
    lock = threading.Lock()

    def request(conn, method, path, token, body=None):
        payload = None if body is None else json.dumps(body)
        headers = {"Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if payload else {})}
        start = time.perf_counter()
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = json.loads(response.read())
        return response.status, data, (time.perf_counter() - start) * 1000

    def labeller(name: str, token: str, rng: random.Random):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while True:
                status, body, ms = request(conn, "GET", "/api/next", token)
                item = body.get("item")
                if status != 200 or item is None:
                    return
                k = len(item["answers"])
                ranks = [rng.randrange(k) for _ in range(k)]
                while len(set(ranks)) < 2:
                    ranks = [rng.randrange(k) for _ in range(k)]
                distinct = sorted(set(ranks))
                label = {"key": item["key"], "ranks": [distinct.index(r) for r in ranks],
                         "ratings": [rng.randint(1, 7) for _ in range(k)], "flags": [[] for _ in range(k)]}
                status, _, ms_label = request(conn, "POST", "/api/labels", token, label)
                with lock:
                    latencies["next"].append(ms)
                    latencies["label"].append(ms_label)
                    if status == 200:
                        acked.append((item["key"], name))
                        if on_ack:
                            on_ack(len(acked))
        except (OSError, http.client.HTTPException, json.JSONDecodeError):
            return  # the server was killed: what it acknowledged is counted

    threads = [threading.Thread(target=labeller, args=(name, token, random.Random(f"{seed}:{name}")))
               for name, token in tokens.items()]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"acked": acked, "latencies": latencies, "wall_s": time.perf_counter() - start}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"p50": round(at(0.5), 2), "p90": round(at(0.9), 2), "p99": round(at(0.99), 2), "max": round(ordered[-1], 2)}


def exported_labels(path: Path) -> set[tuple[str, str]]:
    from rlhf.rank import collected

    return {(collected.key(r), label["labeller"]) for r in collected.read(path) for label in r.get("labels", [])}


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="label_server_"))
    path = folder / "comparisons.jsonl"
    write_file(path, args.prompts, args.answers)
    tokens = {f"labeller{i:02d}": f"token-{i:02d}-{args.seed}-benchmark" for i in range(args.labellers)}
    token_file = folder / "tokens.txt"
    token_file.write_text("".join(f"{n} {t}\n" for n, t in tokens.items()))
    server, port = start(path, token_file)
    killed = threading.Event()

    def kill_at(count: int):
        if args.kill_after is not None and count >= args.kill_after and not killed.is_set():
            killed.set()
            server.send_signal(signal.SIGKILL)

    result = simulate(port, tokens, args.seed, on_ack=kill_at)
    if killed.is_set():
        server.wait()
        server, _ = start(path, token_file)  # the same file and database: nothing acknowledged may be gone
    server.send_signal(signal.SIGINT)  # a clean stop writes the labels into the file
    server.wait(timeout=60)
    exported = exported_labels(path)
    acked = set(result["acked"])
    out = {
        "labellers": args.labellers, "prompts": args.prompts, "answers": args.answers,
        "killed_after": args.kill_after if killed.is_set() else None,
        "acknowledged": len(result["acked"]), "exported": len(exported), "lost": len(acked - exported),
        "duplicate_acks": len(result["acked"]) - len(acked),
        "wall_s": round(result["wall_s"], 2), "labels_per_s": round(len(acked) / result["wall_s"], 1),
        "latency_ms": {"label": percentiles(result["latencies"]["label"]),
                       "next": percentiles(result["latencies"]["next"])},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
