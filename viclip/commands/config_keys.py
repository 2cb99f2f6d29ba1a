"""A misspelled config key on a Hydra command line, reported in one line with the closest valid keys.

Hydra answers ``train.batchsize=4`` with advice to append the key with ``+``, which would silently add
an unused field. :func:`check_override_keys` composes the config once before the app runs; when an
override names a key the config lacks, it exits with ``PROG: error: ...`` naming the key and the
nearest ones (``difflib``); a group option that does not exist (``data=shard``) likewise. Any other
composition problem is left to Hydra's own report.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_NOT_OVERRIDABLE = re.compile(r"Could not override '([^']+)'")


def config_keys(node: object, prefix: str = "") -> list[str]:
    """Every dotted key of a config container (``OmegaConf.to_container``), inner nodes included."""
    if not isinstance(node, dict):
        return []
    return [k for key, value in node.items() for k in (f"{prefix}{key}", *config_keys(value, f"{prefix}{key}."))]


def unknown_key_message(key: str, cfg: DictConfig) -> str:
    """``key`` is not in ``cfg``: the one line naming it and the closest valid keys."""
    keys = config_keys(OmegaConf.to_container(cfg, resolve=False))
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see the config with --cfg job"
    return f"{key} is not a config key; {hint} (a new key needs a leading +, e.g. +{key}=...)"


def unknown_option_message(missing: str, options: list[str]) -> str:
    """``group/name`` is not a config of its group: the one line naming it, the closest and all options."""
    group, name = missing.rsplit("/", 1)
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else ""
    return f"{group}={name} is not a config of {group}/; {hint}(options: {', '.join(options)})"


def check_override_keys(config_module: str, config_name: str, argv: list[str]) -> None:
    """Exit with one line if an override in ``argv`` names a key the composed config does not have.

    Only plain runs are checked (no ``-m``, ``--config-dir`` or other flags): those compose as here.
    """
    if any(arg.startswith("-") for arg in argv):
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException

    overrides = [arg for arg in argv if "=" in arg]
    with initialize_config_module(config_module=config_module, version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=overrides)
            return
        except MissingConfigException as e:
            if not e.options or "/" not in (e.missing_cfg_file or ""):
                return  # Hydra reports it
            sys.exit(f"{Path(sys.argv[0]).name}: error: {unknown_option_message(e.missing_cfg_file, e.options)}")
        except ConfigCompositionException as e:
            match = _NOT_OVERRIDABLE.search(str(e))
            if match is None or "not in struct" not in str(e.__cause__ or e):
                return  # Hydra reports it
            key = match.group(1)
        try:
            cfg = compose(config_name=config_name, overrides=[o for o in overrides if o.split("=", 1)[0] != key])
        except ConfigCompositionException:
            return
    sys.exit(f"{Path(sys.argv[0]).name}: error: {unknown_key_message(key, cfg)}")
