"""The one packaging option setup.cfg cannot express; all else (metadata, dependencies, the
entry point) lives in setup.cfg, and pyproject.toml only names the build backend.

The Hydra configs must ship inside the package, or a non-editable install (`pip install .`, a
wheel, `pip install git+...`) gives a command without them; yet the top-level conf/ stays their
one source (no copy under rlhf/). So conf/ is mapped onto the package `rlhf.conf` (package_dir)
and its YAML files, at any depth, are that package's data: a wheel holds rlhf/conf/**/*.yaml.
setup.cfg cannot say this, because `packages = find:` there cannot be extended by one more name,
and discovery names a package after its directory (conf/ would become a top-level `conf`);
listing every package by hand instead would go stale as subpackages are added. Here discovery
stays (find_packages, so new rlhf.* subpackages need no edit) and rlhf.conf is appended; data/
(the built-in prompt files that configs name) ships the same way, as rlhf.builtin_data.

An editable install (`pip install -e .`, what `make setup` does) keeps reading the checkout's
conf/ directly: rlhf/cli.py takes rlhf/conf/ when it exists (installed from a wheel) and else
conf/ beside the package.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["rlhf", "rlhf.*"]) + ["rlhf.conf", "rlhf.builtin_data"],
    package_dir={"rlhf.conf": "conf", "rlhf.builtin_data": "data"},
    # `**` matches any depth, zero included: conf/config.yaml and conf/hydra/launcher/slurm.yaml.
    # The labelling page's own files (rlhf-rank --web) ship beside its server; data/'s prompt
    # files beside the configs that name them (${builtin_data:...}, experiment=smollm2_ifeval).
    package_data={"rlhf.conf": ["**/*.yaml"], "rlhf.rank": ["static/*"],
                  "rlhf.builtin_data": ["**/*.jsonl", "README.md"]},
)
