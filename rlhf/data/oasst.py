"""OpenAssistant's message trees -> `ranked` rows (format oasst): the one source whose rows are
messages rather than records, so it is grouped before the `ranked` adapter reads it."""

from __future__ import annotations

import logging
from typing import Iterator

from rlhf.data.records import Dropped, RecordError
from rlhf.data.files import Row, RowItem, not_an_object
from rlhf.data.sources import get

log = logging.getLogger(__name__)


def conversations(rows: Iterator[RowItem], f, filters) -> Iterator[RowItem]:
    """OpenAssistant trees (oasst1/oasst2), one message a row (message_id, parent_id, role
    prompter|assistant, text, rank), or the release files' nested trees (one tree a line, the
    root under `prompt`, each message's answers under `replies`) -> one `ranked` row for each
    prompter message with at least two ranked assistant replies: the conversation from the tree's
    root to it is the prompt, the replies ordered by `rank` (0 = best) the responses. Replies the
    labellers did not rank (rank null) cannot be ordered, so they are left out; the log says how
    many. Messages the filters (data.oasst) drop take their replies with them; each is counted.
    Reads the whole source first: a reply may come before its parent."""
    messages: dict[str, tuple[str, Row]] = {}
    for location, row in _flat_messages(rows, f):
        if isinstance(row, RecordError):
            yield location, row
            continue
        try:
            key = get(row, f.message_id)
            role = get(row, f.role)
            if role not in ("prompter", "assistant"):
                raise RecordError(f.role, f"expected 'prompter' or 'assistant', got {role!r}", "bad_messages")
            for name, value in ((f.message_id, key), (f.parent_id, row.get(f.parent_id))):
                if not (value is None and name == f.parent_id) and (isinstance(value, bool) or not isinstance(value, (str, int))):
                    raise RecordError(name, f"expected a message id (a string), got {type(value).__name__}", "wrong_type")
        except RecordError as e:
            yield location, e
            continue
        reason = _filtered(row, filters)
        if reason:
            yield location, Dropped(reason, "left out by data.oasst", f"oasst_{reason}")
            continue
        messages[key] = (location, row)
    replies: dict[str, list[Row]] = {}
    for _, row in messages.values():
        if row.get(f.role) == "assistant" and row.get(f.parent_id) is not None:
            replies.setdefault(row[f.parent_id], []).append(row)
    unranked = 0
    for key, (location, row) in messages.items():
        ranked_replies = [r for r in replies.get(key, []) if r.get(f.response_rank) is not None]
        unranked += len(replies.get(key, [])) - len(ranked_replies)
        if row.get(f.role) != "prompter" or len(ranked_replies) < 2:
            continue
        path, node, seen = [], row, {key}
        while node is not None:
            path.append({"role": "user" if node.get(f.role) == "prompter" else "assistant",
                         "content": node.get(f.response_text)})
            parent = node.get(f.parent_id)
            node = messages[parent][1] if parent in messages else None
            if parent is not None and node is None:
                yield location, RecordError(f.parent_id, f"the conversation's message {parent!r} is not in the "
                                            "source (a partial tree, or left out by data.oasst)", "missing_parent")
                break
            if parent in seen:  # message ids that lead back to themselves: no root to start from
                yield location, RecordError(f.parent_id, f"message {parent!r} is its own ancestor", "bad_tree")
                break
            seen.add(parent)
        else:
            yield location, {f.prompt: path[::-1], f.responses: [
                {f.response_text: r.get(f.response_text), f.response_rank: r.get(f.response_rank)}
                for r in ranked_replies]}
    if unranked:
        log.info("oasst: %d assistant replies without a rank left out (they cannot be ordered)", unranked)


def _flat_messages(rows: Iterator[RowItem], f) -> Iterator[RowItem]:
    """Rows of either layout as one message a row; a tree's messages are located by their path
    of reply indices ("trees.jsonl line 3, message 0.2.1")."""
    for location, row in rows:
        if isinstance(row, dict) and isinstance(row.get("prompt"), dict) and f.message_id in row["prompt"]:
            stack = [(row["prompt"], None, "0")]
            while stack:
                message, parent, at = stack.pop()
                if not isinstance(message, dict):
                    yield f"{location}, message {at}", not_an_object(message)
                    continue
                children = message.get("replies") or []
                flat = {k: v for k, v in message.items() if k != "replies"}
                flat.setdefault(f.parent_id, parent)
                yield f"{location}, message {at}", flat
                if not isinstance(children, list):
                    yield f"{location}, message {at}", RecordError("replies", "expected a list", "wrong_type")
                    continue
                stack.extend((c, message.get(f.message_id), f"{at}.{i}") for i, c in reversed(list(enumerate(children))))
        else:
            yield location, row


def _filtered(row: Row, filters) -> str | None:
    """Why data.oasst leaves this message out, or None. OpenAssistant's own column names."""
    if filters.languages and row.get("lang") not in filters.languages:
        return "lang"
    if filters.drop_deleted and row.get("deleted") is True:
        return "deleted"
    if filters.require_review and row.get("review_result") is False:
        return "review_result"
    if filters.drop_synthetic and row.get("synthetic") is True:
        return "synthetic"
    return None
