"""The labelling page in a real headless chromium (Debian's chromium and chromium-driver, driven
by selenium): a labeller ranks with ties, ratings and flags by keys and by drag, reloads and goes
on; the export trains the reward model exactly as the terminal's ranks do; two labellers at once
on shared prompts, their agreement as worked out by hand; markup in an answer shown, never run."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from rlhf.data import load_data
from tests.conftest import data_config, start_label_server, write_lines

# time limit per test: a browser, a server and an RM trained twice
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.browser]

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKENS = {"ann": "ann-secret-token", "bob": "bob-secret-token"}
MARKUP = ["<script>window.__ran = 'script'</script>", "<img src=x onerror=\"window.__ran = 'onerror'\">",
          "plain <b>bold</b>", "  indented\n\tsecond line"]


@pytest.fixture(scope="module")
def new_browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("CI: Debian's chromium and chromium-driver are missing (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
            options.add_argument(arg)
        drivers.append(webdriver.Chrome(service=Service(DRIVER), options=options))
        return Page(drivers[-1])

    yield start
    for driver in drivers:
        driver.quit()


class Page:
    """One labeller's page, driven by the keys a person would press."""

    def __init__(self, driver):
        self.driver = driver

    def js(self, code, *args):
        return self.driver.execute_script(code, *args)

    def wait(self, condition, what, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        status = self.js("return document.getElementById('status').textContent")
        raise AssertionError(f"timed out waiting for {what}; the page says: {status!r}")

    def open(self, url, name):
        from selenium.webdriver.common.by import By

        self.driver.get(url + "/")
        self.wait(lambda: self.driver.find_element(By.ID, "name").is_displayed(), "the sign-in form")
        self.driver.find_element(By.ID, "name").send_keys(name)
        self.driver.find_element(By.ID, "token").send_keys(TOKENS[name])
        self.driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        self.wait(lambda: self.prompt() or self.js("return !document.getElementById('done').hidden"), "a prompt")

    def prompt(self):
        return self.js("return document.getElementById('label').hidden ? null : document.getElementById('prompt').textContent")

    def shown(self):
        """Answer indices in the order the page shows them (best first) and each card's text."""
        return self.js("return [...document.querySelectorAll('#answers .card')].map(c => "
                       "[Number(c.dataset.answer), c.querySelector('.answer').textContent])")

    def press(self, *keys):
        from selenium.webdriver.common.action_chains import ActionChains

        for key in keys:
            ActionChains(self.driver).send_keys(key).perform()

    def select(self, pos):
        now = self.js("return [...document.querySelectorAll('#answers .card')].findIndex(c => c.classList.contains('selected'))")
        self.press(*(["j"] * (pos - now) if pos > now else ["k"] * (now - pos)))

    def rank(self, ranks, flags=None, drag=False):
        """Orders the answers best first by these ranks (equal = tie), rates each 7 - rank, ticks
        the flags ({answer: key}), and submits."""
        best_first = sorted(range(len(ranks)), key=lambda a: (ranks[a], a))
        for pos, answer in enumerate(best_first):
            order = [a for a, _ in self.shown()]
            at = order.index(answer)
            if at == pos:
                continue
            if drag:  # what a mouse does: dragstart on the card, drop on the place it goes
                self.js("const cards = document.querySelectorAll('#answers .card'); const dt = new DataTransfer();"
                        "cards[arguments[0]].dispatchEvent(new DragEvent('dragstart', {dataTransfer: dt, bubbles: true}));"
                        "cards[arguments[1]].dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));",
                        at, pos)
            else:
                self.select(at)
                self.press(*["K"] * (at - pos))
        assert [a for a, _ in self.shown()] == best_first
        for pos, answer in enumerate(best_first):
            self.select(pos)
            self.press(str(7 - ranks[answer]))
            if pos and ranks[answer] == ranks[best_first[pos - 1]]:
                self.press("t")
            if flags and answer in flags:
                self.press(flags[answer])
        before = self.prompt()
        self.press("\n")
        self.wait(lambda: self.prompt() != before, "the next prompt")


def record(prompt, texts):
    return {"prompt": prompt, "split": "rm", "responses": [{"text": t, "rank": None, "policy": "p", "seed": i}
                                                          for i, t in enumerate(texts)]}


# The five prompts, the ranks given to each (by answer), what the terminal types for the same
# ranking, and the flags ticked (answer -> key): ties on three of them.
PROMPTS = [record(f"sort ascending: {a} {b} {c}", [f"{a} {b} {c}", f"{c} {b} {a}", f"{b} {a} {c}", f"{c} {a} {b}"])
           for a, b, c in ((3, 1, 2), (5, 4, 6), (9, 7, 8), (2, 0, 1))]
PROMPTS.insert(2, record("sort ascending: 1 0", MARKUP))
RANKS = [[1, 0, 2, 1], [0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 1, 2], [2, 0, 1, 2]]
TYPED = ["2 1=4 3", "1 2 3 4", "4 3 2 1", "1=2 3 4", "2 3 1=4"]
FLAGS = [{2: "h"}, {}, {0: "x", 1: "x"}, {3: "i"}, {}]
FLAG_NAMES = {"h": "hallucination", "x": "harmful", "i": "fails_instruction"}


@pytest.fixture(scope="module")
def ranked_in_browser(new_browser, tmp_path_factory):
    """ann ranks the five prompts in the browser (two, a reload mid-prompt, three more), and the
    server stops with SIGINT, which writes the labels into the file."""
    folder = tmp_path_factory.mktemp("browser")
    path = write_lines(folder / "comparisons.jsonl", PROMPTS)
    server, url = start_label_server(path, {"ann": TOKENS["ann"]})
    page = new_browser()
    try:
        page.open(url, "ann")
        seen = {}
        for i in range(5):
            assert page.prompt() == PROMPTS[i]["prompt"]  # file order
            seen[i] = page.shown()
            if i == 2:
                assert page.js("return window.__ran === undefined")  # markup shown: neither script ran
                page.select(1)
                page.press("3", "K")  # half done when the page reloads
                page.driver.refresh()
                page.wait(page.prompt, "the prompt after the reload")
                assert page.prompt() == PROMPTS[2]["prompt"]  # still signed in, the same prompt
            page.rank(RANKS[i], FLAGS[i], drag=i == 1)
        assert page.js("return !document.getElementById('done').hidden")
        progress = page.js("return document.getElementById('progress-text').textContent")
        return {"path": path, "folder": folder, "seen": seen, "progress": progress,
                "ran": page.js("return window.__ran === undefined ? null : window.__ran")}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def test_a_labeller_ranks_five_prompts_with_ties_and_flags_reloads_and_continues(ranked_in_browser):
    assert ranked_in_browser["progress"] == "5 / 5 ranked (you: 5, skipped 0)"
    rows = [json.loads(line) for line in ranked_in_browser["path"].read_text().splitlines()]
    assert [[r["rank"] for r in row["responses"]] for row in rows] == RANKS
    assert all(row["labeller"] == "ann" for row in rows)
    for row, ranks, flags in zip(rows, RANKS, FLAGS):
        [label] = row["labels"]
        assert label["ranks"] == ranks and label["ratings"] == [7 - r for r in ranks]
        assert label["flags"] == [[FLAG_NAMES[flags[a]]] if a in flags else [] for a in range(4)]
        assert label["seconds"] > 0


def test_markup_in_an_answer_is_shown_as_its_characters_and_never_runs(ranked_in_browser):
    assert ranked_in_browser["ran"] is None
    shown = dict(ranked_in_browser["seen"][2])
    assert [shown[a] for a in range(4)] == MARKUP  # every character kept, whitespace too


def test_the_exported_file_trains_the_reward_model_as_the_terminals_ranks_do(ranked_in_browser, tokenizer,
                                                                              monkeypatch, run_cli):
    from rlhf.rank import main

    typed = write_lines(ranked_in_browser["folder"] / "typed.jsonl", PROMPTS)
    answers = iter(TYPED)
    monkeypatch.setattr("builtins.input", lambda _: next(answers))
    assert main([str(typed)]) == 0
    exported = ranked_in_browser["path"]
    read = [load_data(data_config(p, "ranked"), tokenizer).splits["rm"].comparisons for p in (exported, typed)]
    assert read[0] == read[1] and len(read[0]) == 5

    # The same round-2 reward model from either file, to the byte: nothing the RM reads differs
    root = ranked_in_browser["folder"] / "runs_root"
    small = ["data.toy.num_prompts=400", "logger=none", "sft.max_steps=2", "sft.gold_eval_prompts=0"]
    root.mkdir()
    run_cli("run=web", "stage=sft", *small, cwd=root)
    shutil.copytree(root / "runs" / "web" / "sft", root / "runs" / "typed" / "sft")
    for run, source in (("web", exported), ("typed", typed)):
        collect = root / "runs" / run / "round_2" / "collect"
        collect.mkdir(parents=True)
        shutil.copy(source, collect / "comparisons.jsonl")
        run_cli(f"run={run}", "stage=rm", "loop.round=2", *small, "rm.max_steps=3", "rm.wrong_digit_pairs=0",
                "rm.normalize_max_demonstrations=64", cwd=root)
    weights = [(root / "runs" / run / "round_2" / "rm" / "final" / "model.safetensors").read_bytes()
               for run in ("web", "typed")]
    assert weights[0] == weights[1]
    source = json.loads((root / "runs" / "web" / "round_2" / "rm" / "manifest.json").read_text())["data"]["sources"]
    # the markup prompt's answers are longer than the toy's token limit: left out, counted, in both runs
    assert source["collected_round_2"]["records_kept"] == 4
    assert source["collected_round_2"]["dropped"] == {"response_too_long": 1}


def test_two_labellers_at_once_on_shared_prompts_and_their_agreement_by_hand(new_browser, tmp_path):
    prompts = [record(f"sort ascending: {i} 2 1", [f"1 2 {i}", f"{i} 1 2", f"2 {i} 1"]) for i in (3, 4, 5)]
    path = write_lines(tmp_path / "comparisons.jsonl", prompts)
    server, url = start_label_server(path, TOKENS, "--overlap", "1")
    ann, bob = new_browser(), new_browser()
    ann_ranks = [[0, 1, 2]] * 3
    bob_ranks = [[0, 1, 2], [0, 2, 1], [2, 1, 0]]
    try:
        ann.open(url, "ann")
        bob.open(url, "bob")
        for i in range(3):  # both hold prompt i at once; both labels kept
            assert ann.prompt() == bob.prompt() == prompts[i]["prompt"]
            bob.rank(bob_ranks[i])
            ann.rank(ann_ranks[i])
        ann.press("g")  # the summary view's key
        text = ann.wait(lambda: ann.js("return document.getElementById('summary').hidden ? null : "
                                       "document.getElementById('summary-agreement').textContent"), "the summary")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    # By hand: pairs ordered alike 3 + 2 + 0 of 9; tau-b 1, 1/3, -1 -> mean 1/9
    assert "over 3 prompts" in text and "(9 answer pairs)" in text and "55.6% of pairs" in text and "tau 0.111" in text
    summary = json.loads(path.with_name(path.name + ".summary.json").read_text())
    assert summary["agreement"]["pairwise"] == pytest.approx(5 / 9)
    assert summary["agreement"]["kendall_tau"] == pytest.approx(1 / 9)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [[(l["labeller"], l["ranks"]) for l in row["labels"]] for row in rows] == \
        [[("ann", a), ("bob", b)] for a, b in zip(ann_ranks, bob_ranks)]
    assert [[r["rank"] for r in row["responses"]] for row in rows] == [[0, 1, 2], [0, 1, 1], [0, 0, 0]]
