"""The test suite as packages (tests/, unit/, e2e/, cluster/ each have an __init__.py): pytest
names modules by their dotted path (tests.unit.test_lora, tests.e2e.test_lora_stages), so two
folders may hold files of the same basename, and helpers import as tests.conftest and
tests.cluster.slurm. A new folder of tests needs an __init__.py too."""
