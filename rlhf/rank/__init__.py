"""Rank the answers `rlhf stage=collect` wrote: `rlhf-rank <comparisons.jsonl>`.

In the terminal (one person; rlhf/rank/terminal.py), or with `--web` on a page in the browser
(several labellers at once, each with a token; ratings, flags, agreement; rlhf/rank/server.py),
whose labels live in SQLite beside the file and are written into it by `--export` and when the
server stops. Either way the file ends up in the format the reward model reads: each response's
"rank", 0 = best, equal = tie (docs/collect.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import sys
from pathlib import Path

from rlhf.rank import collected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-rank", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a comparisons.jsonl written by `rlhf stage=collect`")
    parser.add_argument("--by", choices=("shorter", "longer"), help="rank by a rule instead of asking")
    parser.add_argument("--who", default=None, help="the terminal: recorded as each ranked record's labeller "
                                                    "(default: your answers: 'person'; --by: 'rule:<rule>'); "
                                                    "--web: the one labeller's name when none are given")
    web = parser.add_argument_group("the web page (--web)")
    web.add_argument("--web", action="store_true", help="serve the labelling page instead of asking in the terminal")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=int, default=8765)
    web.add_argument("--allow-remote", action="store_true",
                     help="allow binding beyond this machine (needs --tokens: tokens nobody else saw)")
    web.add_argument("--labellers", default=None, help="comma-separated names; a token is made for each and printed")
    web.add_argument("--tokens", type=Path, default=None, help="a file of 'name token' lines, one labeller a line")
    web.add_argument("--overlap", type=float, default=0.0,
                     help="share of prompts that go to several labellers, to measure agreement (InstructGPT: a share)")
    web.add_argument("--overlap-copies", type=int, default=2, help="how many labellers each shared prompt goes to")
    web.add_argument("--export", action="store_true", help="write the web labels into the file, print the summary, exit")
    web.add_argument("--summary", action="store_true", help="print the web labels' summary (agreement, time), exit")
    args = parser.parse_args(argv)
    try:
        if not (args.web or args.export or args.summary):
            from rlhf.rank.terminal import rank_file

            return rank_file(args.file, args.by, args.who or (f"rule:{args.by}" if args.by else "person"))
        return _web(parser, args)
    except collected.CollectedFileError as e:
        parser.error(str(e))


def _web(parser: argparse.ArgumentParser, args) -> int:
    from rlhf.rank.store import LabelStore, db_path_for, export

    if not 0.0 <= args.overlap <= 1.0:
        parser.error(f"--overlap {args.overlap}: a share, 0 to 1")
    if args.overlap_copies < 2:
        parser.error(f"--overlap-copies {args.overlap_copies}: at least 2 (a shared prompt goes to several labellers)")
    records = collected.read(args.file)
    store = LabelStore(db_path_for(args.file), records, overlap=args.overlap, overlap_copies=args.overlap_copies)
    if store.missing:
        print(f"rlhf-rank: {len(store.missing)} prompt(s) queued before are no longer in {args.file}: left out "
              "of the queue (their labels stay in the database)", file=sys.stderr)
    if args.export or args.summary:
        summary = export(args.file, store) if args.export else store.summary()
        print(json.dumps(summary, indent=2))
        return 0
    if not _loopback(args.host):
        if not args.allow_remote:
            parser.error(f"--host {args.host} reaches beyond this machine: add --allow-remote (and --tokens FILE) "
                         "if that is what you want")
        if args.tokens is None:
            parser.error("--allow-remote needs --tokens FILE: tokens made up and printed here could be read by anyone "
                         "who sees this console")
    store.add_labellers(_tokens(parser, args, store.labellers()))
    return _serve(args, store)


def _tokens(parser, args, known: dict[str, str]) -> dict[str, str]:
    """The labellers to add: from --tokens, else --labellers (a known name keeps its token, so a
    restart does not sign anyone out), else one labeller named --who (or 'person')."""
    if args.tokens is not None:
        if not args.tokens.is_file():
            parser.error(f"--tokens {args.tokens}: no such file")
        tokens = {}
        for number, line in enumerate(args.tokens.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2 or len(parts[1]) < 8:
                parser.error(f"{args.tokens} line {number}: expected 'name token', the token 8 characters or more")
            tokens[parts[0]] = parts[1]
        if not tokens:
            parser.error(f"{args.tokens}: no 'name token' line")
        return tokens
    names = [n.strip() for n in args.labellers.split(",") if n.strip()] if args.labellers else []
    if not names and not known:
        names = [args.who or "person"]
    return {name: known.get(name) or secrets.token_urlsafe(12) for name in names}


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args, store) -> int:
    import uvicorn

    from rlhf.rank.server import create_app

    url = f"http://{args.host}:{args.port}/"
    progress = store.progress("")
    print(f"rlhf-rank: {progress['total']} prompts to label from {args.file} at {url}", file=sys.stderr)
    for name, token in store.labellers().items():
        print(f"  labeller {name}: token {token}", file=sys.stderr)
    print("  labels are saved as they come (SQLite beside the file); Ctrl-C writes them into the file",
          file=sys.stderr, flush=True)
    uvicorn.run(create_app(args.file, store), host=args.host, port=args.port, log_level="warning")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
