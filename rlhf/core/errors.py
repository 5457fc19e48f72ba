"""The error every layer raises for a config it cannot run with. It lives on the floor, not in
rlhf.config, so that core and algos can raise it without importing the schema above them."""


class ConfigError(ValueError):
    """A config that composes but cannot run; the message names every field involved."""
