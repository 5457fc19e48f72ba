"""The labelling server under the load of a team (benchmarks/label_server.py, run in process):
20 labellers at once post 1,000 labels through the HTTP API and every one is in the export; the
server SIGKILLed mid-load and started again keeps every label it acknowledged. Latency is the
benchmark's to report (docs/results.md), not a test's."""

import importlib.util

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def benchmark():
    spec = importlib.util.spec_from_file_location("label_server", ROOT / "benchmarks" / "label_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twenty_labellers_post_a_thousand_labels_and_every_one_is_exported(capsys):
    result = benchmark().main(["--labellers", "20", "--prompts", "1000"])
    assert result["acknowledged"] == 1000 and result["exported"] == 1000
    assert result["lost"] == 0 and result["duplicate_acks"] == 0


def test_a_server_killed_mid_load_keeps_every_label_it_acknowledged(capsys):
    result = benchmark().main(["--labellers", "20", "--prompts", "1000", "--kill-after", "300"])
    assert result["killed_after"] == 300
    assert 300 <= result["acknowledged"] < 1000  # killed part way, every thread stopped by it
    # a label committed as the server died may never have been answered: more may be kept, none lost
    assert result["exported"] >= result["acknowledged"] and result["lost"] == 0
