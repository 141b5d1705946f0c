"""Overrides of a config's settings, deep-merged into its YAML before validation: the CLI's `--set key=value`
items (and `--seed`), and the settings a monitoring retrain changes. `config.load_config` applies them.
"""

from __future__ import annotations

import re

import yaml

from rnn_pipeline.errors import ConfigError


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def given_by(loc: tuple, overrides: dict) -> bool:
    """Whether the setting at `loc` (a validation error's location) was given, or replaced whole, by `overrides`."""
    node = overrides
    for key in loc:
        if not isinstance(node, dict):
            return True  # the override replaced this whole value
        if key not in node:
            return False
        node = node[key]
    return bool(loc)


def parse_overrides(items: list[str] | None, seed: int | None = None) -> dict:
    """`--set key=value` items (and `--seed N`) as one nested dict of overrides for the config. The key is a dotted
    path into the config (`tuning.space.window`); the value is read as YAML, so numbers, booleans, null and lists
    (`[96, 192]`) come out typed and a bare word stays a string. Later items win; mappings merge. Whether each key
    exists and each value fits is checked with the config (ConfigError naming --set)."""
    out: dict = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set tuning.n_trials=5)")
        parts = [k.strip() for k in key.split(".")]
        if not all(parts):
            raise ConfigError(f"--set {item!r}: {'empty key' if not key.strip() else 'empty part in the dotted key'} "
                              "(expected key=value, e.g. --set model.hidden=64)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})"
                              ) from None
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*", text):
            value = float(value)  # YAML 1.1 reads an unquoted 3e-4 (no dot) as a string
        for k in reversed(parts):
            value = {k: value}
        out = merge(out, value)
    if seed is not None:
        out["seed"] = seed
    return out
