"""Splits are a pure function of (salt, prompt): deterministic, disjoint, and sized as asked."""

import subprocess
import sys

import pytest

from rlhf.config import DataConfig, SplitConfig, ToyConfig
from rlhf.data import assign_splits, load_data, prompt_key


@pytest.fixture(scope="module")
def toy_bundle(tokenizer):
    return load_data(DataConfig(toy=ToyConfig(num_prompts=3000)), tokenizer)


def keys(split):
    return {prompt_key(p.prompt) for p in split.prompts}


def test_splits_are_disjoint_and_cover_every_prompt(toy_bundle):
    sets = {name: keys(s) for name, s in toy_bundle.splits.items()}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    assert sum(map(len, sets.values())) == 3000 and toy_bundle.unassigned_prompts == 0
    # every record of a split has its prompt in that split
    for name, s in toy_bundle.splits.items():
        assert {prompt_key(r.prompt) for r in s.demonstrations + s.comparisons} == sets[name]


def test_split_sizes_follow_fractions(toy_bundle):
    for name, fraction in [("sft", 0.4), ("rm", 0.3), ("ppo", 0.2), ("eval", 0.1)]:
        share = len(toy_bundle.splits[name].prompts) / 3000
        assert abs(share - fraction) < 0.03, (name, share)


def test_assignment_is_deterministic_across_processes():
    prompts = [f"sort: {i} {i + 1}" for i in range(50)]
    here = [assign_splits(p, SplitConfig()) for p in prompts]
    code = ("from rlhf.config import SplitConfig; from rlhf.data import assign_splits; "
            f"print([assign_splits(p, SplitConfig()) for p in {prompts!r}])")
    # a different PYTHONHASHSEED would change anything built on hash(); sha256 is immune
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == repr(here)
    # Pinned: changing the hashing scheme would silently reshuffle every user's splits.
    pinned = {"sort: 2": "sft", "sort: 3": "rm", "sort: 0": "ppo", "sort: 20": "eval"}
    assert {p: assign_splits(p, SplitConfig()) for p in pinned} == {p: [s] for p, s in pinned.items()}


def test_salt_reshuffles_and_order_does_not_matter(tokenizer):
    prompts = [f"prompt number {i}" for i in range(400)]
    a = [assign_splits(p, SplitConfig()) for p in prompts]
    b = [assign_splits(p, SplitConfig(salt="other")) for p in prompts]
    assert 0.4 < sum(x != y for x, y in zip(a, b)) / 400 < 0.9
    assert [assign_splits(p, SplitConfig()) for p in reversed(prompts)] == a[::-1]


def test_shared_splits_get_the_same_prompts(tokenizer):
    cfg = DataConfig(toy=ToyConfig(num_prompts=1000),
                     splits=SplitConfig(sft=0.5, rm=0.5, ppo=0.3, eval=0.2, shared=["sft", "rm"]))
    b = load_data(cfg, tokenizer)
    assert keys(b.splits["sft"]) == keys(b.splits["rm"])
    assert not keys(b.splits["sft"]) & keys(b.splits["ppo"])
    assert abs(len(b.splits["sft"].prompts) / 1000 - 0.5) < 0.05


def test_fractions_below_one_leave_prompts_unassigned_and_say_so(tokenizer):
    cfg = DataConfig(toy=ToyConfig(num_prompts=1000), splits=SplitConfig(sft=0.2, rm=0.2, ppo=0.2, eval=0.2))
    b = load_data(cfg, tokenizer)
    assert 150 < b.unassigned_prompts < 250
    assert b.summary()["unassigned_prompts"] == b.unassigned_prompts


def test_a_source_pinned_to_a_split_puts_every_prompt_there_and_the_others_hash_as_before(tmp_path, tokenizer):
    import json

    from rlhf.checks import data_problems
    from rlhf.config import DataFormat, RLHFConfig, SourceConfig

    def write(name, n):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"{name} question {i}"}) + "\n" for i in range(n)))
        return str(path)

    # "again": comparisons on ten of the test set's prompts, unpinned: they follow the test set into eval
    again = tmp_path / "again.jsonl"
    again.write_text("".join(json.dumps({"prompt": f"test question {i}", "chosen": "yes", "rejected": "no"}) + "\n"
                             for i in range(10)))
    main = DataConfig(name="train", format=DataFormat.prompt, path=write("train", 200),
                      sources=[SourceConfig(name="test", format=DataFormat.prompt, path=write("test", 30), split="eval"),
                               SourceConfig(name="again", format=DataFormat.pairwise, path=str(again))])
    bundle = load_data(main, tokenizer)
    assert {p.prompt for p in bundle.splits["eval"].prompts if p.source == "test"} == {f"test question {i}" for i in range(30)}
    assert {c.prompt for c in bundle.splits["eval"].comparisons} == {f"test question {i}" for i in range(10)}
    assert [assign_splits(f"test question {i}", main.splits) for i in range(10)].count(["eval"]) < 5  # not by chance
    assert not any(p.source == "test" for name in ("sft", "rm", "ppo") for p in bundle.splits[name].prompts)
    assert not any(bundle.splits[name].comparisons for name in ("sft", "rm", "ppo"))
    for name in ("sft", "rm", "ppo", "eval"):
        assert [p.prompt for p in bundle.splits[name].prompts if p.source == "train"] == [
            f"train question {i}" for i in range(200) if assign_splits(f"train question {i}", main.splits) == [name]]
    cfg = RLHFConfig(data=DataConfig(name="d", format=DataFormat.prompt, path="x.jsonl", split="test"))
    assert any("data.split='test': choose from ['sft', 'rm', 'ppo', 'eval']" in p for p in data_problems(cfg))
