"""load_config: a YAML file and `key=value` overrides -> a checked Config, every problem reported at once;
and the resolved config written back as YAML."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from dcl_dist.config.build import build_section
from dcl_dist.config.checks import check_values
from dcl_dist.config.overrides import apply_overrides
from dcl_dist.config.preflight import run_preflight
from dcl_dist.config.schema import VARIANT_IMBALANCE, Config
from dcl_dist.config.yaml_file import read_yaml
from dcl_dist.errors import ConfigError

log = logging.getLogger(__name__)


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, preflight: bool = True) -> Config:
    """Read a YAML config (or none: defaults only), apply `key=value` overrides, check everything at once.

    preflight=False leaves out the checks against this machine (data files, model folder, pkg: names, LoRA
    targets; see preflight.py): a config meant for another machine, or a test.
    """
    data, where = read_yaml(Path(path)) if path is not None else ({}, {})
    problems = apply_overrides(data, where, list(overrides or []))
    failed: set[str] = set()
    cfg = build_section(Config, data, "", where, problems, failed)
    problems += check_values(cfg, where, failed)
    if preflight:
        problems += run_preflight(cfg, where, failed)
    if problems:
        raise ConfigError(problems)
    _apply_variant_imbalance(cfg, where)
    return cfg


def _apply_variant_imbalance(cfg: Config, where: dict[str, str]) -> None:
    """no_imb and extra_imb are three_phase with a fixed cl.imbalance: it replaces the configured one."""
    forced = VARIANT_IMBALANCE.get(cfg.run.variant)
    if forced is None or cfg.cl.imbalance == forced:
        return
    if "cl.imbalance" in where:
        log.warning(
            "run.variant %s is three_phase with cl.imbalance %s: it replaces cl.imbalance %s (%s)",
            cfg.run.variant,
            forced,
            cfg.cl.imbalance,
            where["cl.imbalance"],
        )
    cfg.cl.imbalance = forced


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (for YAML, JSON and fingerprints)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML that load_config reads back to an equal Config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
