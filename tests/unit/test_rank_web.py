"""The labelling server's store and JSON API in process (FastAPI's TestClient): who gets which
prompt, undo and skip, resuming after a restart, the export the reward model reads, and the
security rules (a token on every write, no path in any request, capped bodies, remote binding)."""

import json

import pytest
from fastapi.testclient import TestClient

from rlhf.config import MultiLabel
from rlhf.data import load_data
from rlhf.rank import collected, main
from rlhf.rank.server import MAX_BODY, create_app
from rlhf.rank.store import LabelStore, db_path_for, export, shared
from tests.conftest import data_config, write_lines

NO_FLAGS = [[], [], []]


def record(i: int, k: int = 3) -> dict:
    return {"prompt": f"sort ascending: {i} 1 2", "split": "rm",
            "responses": [{"text": f"answer {j} to {i}", "rank": None, "policy": "p", "seed": j} for j in range(k)]}


@pytest.fixture
def file(tmp_path):
    return write_lines(tmp_path / "comparisons.jsonl", [record(i) for i in range(4)])


def store_for(path, **kw) -> LabelStore:
    store = LabelStore(db_path_for(path), collected.read(path), **kw)
    store.add_labellers({"ann": "ann-token-1", "bob": "bob-token-2"})
    return store


def client(path, store) -> TestClient:
    return TestClient(create_app(path, store, export_on_stop=False))


def auth(name: str) -> dict:
    return {"Authorization": f"Bearer {name}-token-{1 if name == 'ann' else 2}"}


def keys_in_file_order(path) -> list[str]:
    return [collected.key(r) for r in collected.read(path)]


def test_labellers_pull_prompts_in_file_order_and_a_claimed_prompt_is_nobody_elses(file):
    store = store_for(file)
    keys = keys_in_file_order(file)
    assert store.next_item("ann") == keys[0]
    assert store.next_item("ann") == keys[0]  # asked again (a reload): the same prompt
    assert store.next_item("bob") == keys[1]  # ann holds the first; one label each is enough
    store.submit("ann", keys[0], [0, 1, 2], [7, 4, 1], NO_FLAGS)
    assert store.next_item("ann") == keys[2]
    assert store.progress("ann") == {"done": 1, "total": 4, "mine": 1, "skipped": 0}


def test_shared_prompts_go_to_two_labellers_and_the_share_is_fixed_by_hash(file):
    keys = keys_in_file_order(file)
    store = store_for(file, overlap=1.0)  # every prompt to two labellers
    assert store.next_item("ann") == keys[0] and store.next_item("bob") == keys[0]
    picked = [k for k in (f"{i:04d}" for i in range(2000)) if shared(k, 0.2)]
    assert picked == [k for k in (f"{i:04d}" for i in range(2000)) if shared(k, 0.2)]  # the same every time
    assert len(picked) / 2000 == pytest.approx(0.2, abs=0.03)  # 3.4 standard errors of a share of 2,000


def test_a_skipped_prompt_comes_back_once_nothing_else_is_left(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [record(0), record(1)])
    store = store_for(path)
    first, second = keys_in_file_order(path)
    store.skip("ann", store.next_item("ann"))
    assert store.next_item("ann") == second
    store.submit("ann", second, [1, 0, 2], [3, 5, 1], NO_FLAGS)
    assert store.next_item("ann") == first
    assert store.progress("ann")["skipped"] == 1


def test_undo_takes_back_the_last_label_and_gives_the_prompt_back_as_it_was(file):
    store = store_for(file)
    keys = keys_in_file_order(file)
    store.submit("ann", store.next_item("ann"), [0, 0, 1], [6, 6, 2], [["hallucination"], [], []])
    store.next_item("ann")  # the second prompt is on screen when ann presses undo
    undone = store.undo("ann")
    assert undone == {"key": keys[0], "undone": "label",
                      "label": {"ranks": [0, 0, 1], "ratings": [6, 6, 2], "flags": [["hallucination"], [], []],
                                "seconds": undone["label"]["seconds"]}}
    assert store.next_item("ann") == keys[0] and store.labels() == {}
    assert store.undo("ann") is None


def test_a_restarted_server_resumes_each_labeller_where_they_stopped(file):
    store = store_for(file)
    keys = keys_in_file_order(file)
    store.submit("ann", store.next_item("ann"), [0, 1, 2], [7, 4, 1], NO_FLAGS)
    assert store.next_item("ann") == keys[1] and store.next_item("bob") == keys[2]
    store.close()
    again = LabelStore(db_path_for(file), collected.read(file))
    assert again.next_item("bob") == keys[2] and again.next_item("ann") == keys[1]
    assert again.labellers() == {"ann": "ann-token-1", "bob": "bob-token-2"}  # tokens kept: nobody signed out
    assert list(again.labels()) == [keys[0]]


@pytest.mark.parametrize("change,message", [
    ({"ranks": [0, 1]}, "'ranks': 2 values for 3 answers"),
    ({"ranks": [0, 2, 3]}, "no gap"),
    ({"ranks": [1, 1, 1]}, "no gap"),
    ({"ranks": [0, 0, 0]}, "every answer tied"),
    ({"ratings": [0, 4, 8]}, "1 \\(worst\\) to 7"),
    ({"flags": [["nonsense"], [], []]}, "unknown flag"),
    ({"key": "0" * 24}, "no prompt"),
])
def test_a_bad_label_is_refused_naming_its_field(file, change, message):
    store = store_for(file)
    api = client(file, store)
    label = {"key": store.next_item("ann"), "ranks": [0, 1, 2], "ratings": [1, 2, 3], "flags": NO_FLAGS, **change}
    response = api.post("/api/labels", json=label, headers=auth("ann"))
    assert response.status_code == 422
    assert __import__("re").search(message, response.json()["detail"])
    assert store.labels() == {}


def test_every_api_request_needs_a_labellers_token_and_the_token_decides_who_writes(file):
    store = store_for(file)
    api = client(file, store)
    key = store.next_item("ann")
    label = {"key": key, "ranks": [0, 1, 2], "ratings": [1, 2, 3], "flags": NO_FLAGS}
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "ann-token-1"[:-1]}):
        assert api.post("/api/labels", json=label, headers=headers).status_code == 401
        assert api.get("/api/next", headers=headers).status_code == 401
    assert api.post("/api/login", json={"name": "ann", "token": "bob-token-2"}).status_code == 401
    assert api.post("/api/login", json={"name": "ann", "token": "ann-token-1"}).json() == {"name": "ann"}
    assert store.labels() == {}
    assert api.post("/api/labels", json=label, headers=auth("bob")).status_code == 200
    assert list(store.labels()[key]) == ["bob"]  # the token's labeller, whatever the page shows


def test_no_request_can_name_another_file(file, tmp_path):
    other = write_lines(tmp_path / "other.jsonl", [record(9)])
    before = other.read_bytes()
    store = store_for(file)
    api = client(file, store)
    item = api.get(f"/api/next?file={other}&path={other}", headers=auth("ann")).json()["item"]
    assert item["prompt"] == "sort ascending: 0 1 2"  # the file fixed at start, whatever the query says
    label = {"key": item["key"], "ranks": [0, 1, 2], "ratings": [1, 2, 3], "flags": NO_FLAGS}
    assert api.post("/api/labels", json={**label, "path": str(other)}, headers=auth("ann")).status_code == 422
    assert store.labels() == {} and other.read_bytes() == before
    assert not db_path_for(other).exists()


def test_an_oversized_body_is_refused_before_it_is_read(file):
    api = client(file, store_for(file))
    big = json.dumps({"key": "x" * MAX_BODY})
    response = api.post("/api/skip", content=big, headers={**auth("ann"), "Content-Type": "application/json"})
    assert response.status_code == 413


def test_the_page_is_served_with_a_policy_that_forbids_inline_script(file):
    response = client(file, store_for(file)).get("/")
    assert response.status_code == 200 and "<script src=\"/static/app.js\"" in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "unsafe-inline" not in response.headers["content-security-policy"]


def test_export_writes_the_mean_rank_and_every_label_and_the_rm_data_layer_reads_both_ways(file, tokenizer):
    store = store_for(file, overlap=1.0)
    keys = keys_in_file_order(file)
    store.submit("ann", keys[0], [0, 1, 2], [7, 4, 1], [[], ["harmful"], []])
    store.submit("bob", keys[0], [1, 0, 2], [5, 6, 1], NO_FLAGS)  # mean ranks 0.5, 0.5, 2
    store.submit("ann", keys[1], [0, 1, 2], [7, 4, 1], NO_FLAGS)
    store.submit("bob", keys[1], [1, 0, 2], [5, 6, 2], NO_FLAGS)
    store.submit("ann", keys[2], [2, 1, 0], [1, 2, 3], NO_FLAGS)  # one label only
    summary = export(file, store)
    assert summary["exported"] == 3 and summary["agreement"]["answer_pairs"] == 6
    assert summary["agreement"]["pairwise"] == pytest.approx(4 / 6)  # (0,1) flipped on both prompts
    rows = [json.loads(line) for line in file.read_text().splitlines()]
    assert [r["rank"] for r in rows[0]["responses"]] == [0, 0, 1] and rows[0]["labeller"] == "ann, bob"
    assert rows[0]["labels"][0] == {"labeller": "ann", "ranks": [0, 1, 2], "ratings": [7, 4, 1],
                                    "flags": [[], ["harmful"], []], "seconds": None}
    assert [r["rank"] for r in rows[2]["responses"]] == [2, 1, 0]
    assert all(r["rank"] is None for r in rows[3]["responses"])  # nobody labelled it: as it was
    assert json.loads(file.with_name(file.name + ".summary.json").read_text())["exported"] == 3

    write_lines(file, rows[:3])  # the RM refuses unranked records; the labelled three
    mean = load_data(data_config(file, "ranked"), tokenizer).splits["rm"].comparisons
    assert [c.ranks for c in mean] == [(0, 0, 1), (0, 0, 1), (0, 1, 2)]
    each = load_data(data_config(file, "ranked", multi_label=MultiLabel.each), tokenizer).splits["rm"].comparisons
    assert [(c.responses[0][:8], c.ranks) for c in each] == [("answer 0", (0, 1, 2)), ("answer 1", (0, 1, 2))] * 2 + \
        [("answer 2", (0, 1, 2))]


def test_labellers_who_cancel_out_leave_the_prompt_out_counted(tmp_path, tokenizer):
    path = write_lines(tmp_path / "c.jsonl", [record(0, k=2), record(1, k=2)])
    store = store_for(path, overlap=1.0)
    a, b = keys_in_file_order(path)
    store.submit("ann", a, [0, 1], [5, 3], [[], []])
    store.submit("bob", a, [1, 0], [3, 5], [[], []])
    store.submit("ann", b, [0, 1], [5, 3], [[], []])
    export(path, store)
    data = load_data(data_config(path, "ranked"), tokenizer)
    assert len(data.splits["rm"].comparisons) == 1 and data.dropped.counts == {"labellers_disagree": 1}


def test_the_command_refuses_a_remote_address_without_allow_remote_and_a_token_file(file, tmp_path, capsys):
    for extra, message in ((["--host", "0.0.0.0"], "--allow-remote"),
                           (["--host", "0.0.0.0", "--allow-remote"], "needs --tokens FILE"),
                           (["--overlap", "1.5"], "--overlap 1.5")):
        with pytest.raises(SystemExit) as e:
            main([str(file), "--web", *extra])
        assert e.value.code == 2 and message in capsys.readouterr().err
    bad = tmp_path / "tokens.txt"
    bad.write_text("ann short\n")
    with pytest.raises(SystemExit):
        main([str(file), "--web", "--tokens", str(bad)])
    assert f"{bad} line 1: expected 'name token'" in capsys.readouterr().err


def test_export_and_summary_from_the_command_line(file, capsys):
    store = store_for(file)
    store.submit("ann", store.next_item("ann"), [1, 0, 2], [2, 6, 1], NO_FLAGS)
    store.close()
    assert main([str(file), "--summary"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"] == 1 and summary["labellers"]["ann"]["labels"] == 1
    assert main([str(file), "--export"]) == 0
    first = json.loads(file.read_text().splitlines()[0])
    assert [r["rank"] for r in first["responses"]] == [1, 0, 2]
