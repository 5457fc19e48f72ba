import json
import os
from pathlib import Path

import pytest

from rlhf.config import DataConfig, DataFormat, ModelConfig, OnError, SplitConfig
from rlhf.models import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "data" / "examples"

# Tests never reach a hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(ModelConfig())


def every_split() -> SplitConfig:
    """All four splits share every prompt: small fixtures then reach every split."""
    return SplitConfig(sft=1.0, rm=1.0, ppo=1.0, eval=1.0, shared=["sft", "rm", "ppo", "eval"])


def data_config(path, fmt: str, **kw) -> DataConfig:
    kw.setdefault("splits", every_split())
    if "on_error" in kw:
        kw["on_error"] = OnError[kw["on_error"]]
    return DataConfig(name="test", format=DataFormat[fmt], path=str(path), **kw)


def write_lines(path: Path, lines: list) -> Path:
    """Writes each item as one line: dicts as JSON, strings verbatim (to plant bad JSON)."""
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path
