"""The checks of a config's values that its types cannot express (ranges, keys that must agree), each problem
as "where: 'key' problem: fix". Pure: they read the config alone; what needs files, the hub or the model is in
preflight.py."""

from __future__ import annotations

from collections.abc import Callable, Collection

from dcl_dist.config.schema import IMBALANCE_PRESETS, VARIANT_IMBALANCE, Config, PhaseConfig

Bad = Callable[[str, str], None]
"""bad(key, message): report a problem with a key."""


class Problems:
    """The problems found, each prefixed with where its key was set (file:line, command line, or default)."""

    def __init__(self, where: dict[str, str], failed: Collection[str] = ()):
        self.where, self.failed = where, failed
        self.found: list[str] = []

    def bad(self, key: str, message: str) -> None:
        """Report a problem with key, unless its value did not even fit its type (that is reported already)."""
        if key not in self.failed:
            self.found.append(f"{self.where.get(key, 'default')}: '{key}' {message}")


def check_values(cfg: Config, where: dict[str, str] | None = None, failed: Collection[str] = ()) -> list[str]:
    """Every value problem of a config, at once; where: the file:line of each key set (else 'default')."""
    problems = Problems(where or {}, failed)
    for check in (
        _check_data,
        _check_streaming,
        _check_model,
        _check_phases,
        _check_cl,
        _check_variant_ratios,
        _check_ft_and_joint,
        _check_deepspeed,
        _check_lora,
        _check_checkpoint,
    ):
        check(cfg, problems.bad)
    return problems.found


def _check_data(cfg: Config, bad: Bad) -> None:
    d = cfg.data
    if not d.train:
        bad("data.train", "is empty: set it to a jsonl/csv/parquet file or a hub dataset name")
    if not 0.0 <= cfg.dae.deletion_ratio < 1.0:
        bad("dae.deletion_ratio", f"is {cfg.dae.deletion_ratio}: it must be in [0, 1) (the paper's best: 0.3-0.7)")
    if not 0.0 < d.validation_fraction < 1.0:
        bad("data.validation_fraction", f"is {d.validation_fraction}: it must be in (0, 1), e.g. 0.2")
    if d.num_workers is not None and d.num_workers < 0:
        bad("data.num_workers", "must be >= 0, or null for the default")
    if d.max_train_examples is not None and d.max_train_examples < 2:
        bad("data.max_train_examples", "must be at least 2, or null for all")


def _check_streaming(cfg: Config, bad: Bad) -> None:
    """Settings that only make sense with (or without) data.streaming."""
    d = cfg.data
    if d.shuffle_buffer_size < 1:
        bad("data.shuffle_buffer_size", "must be at least 1 (1: no shuffling)")
    if d.class_counts is not None:
        if not d.streaming:
            bad("data.class_counts", "is only read with data.streaming: true (in memory, counts are exact): remove it")
        elif not d.class_counts or any(n < 1 for n in d.class_counts.values()):
            bad("data.class_counts", "needs at least one class and a count >= 1 for each, like {spam: 120, ham: 3400}")
        elif len({str(k) for k in d.class_counts}) < len(d.class_counts) or len({type(k) for k in d.class_counts}) > 1:
            bad(
                "data.class_counts",
                "mixes whole numbers and strings as class names (1 and '1' would be one class counted twice): write"
                " them one way, as the labels of the data are written",
            )
    if d.streaming and not d.validation:
        bad(
            "data.validation",
            "is needed with data.streaming: a stream cannot hold out a stratified share of train without"
            " reading all of it into memory: give a validation file or hub split (it is read in memory)",
        )
    if d.streaming and d.max_train_examples is not None:
        bad("data.max_train_examples", "needs data in memory: with data.streaming, cap phases with <phase>.max_steps")


def _check_model(cfg: Config, bad: Bad) -> None:
    if isinstance(cfg.model.max_length, int) and not 2 <= cfg.model.max_length <= 8192:
        bad("model.max_length", f"is {cfg.model.max_length}: use 2..8192 or auto")


def _check_phases(cfg: Config, bad: Bad) -> None:
    """The optimisation settings that every phase has."""
    for name in ("dae", "cl", "ft", "joint"):
        phase: PhaseConfig = getattr(cfg, name)
        if phase.lr <= 0:
            bad(f"{name}.lr", f"is {phase.lr}: a learning rate must be > 0, e.g. 3e-5")
        if phase.epochs < 1:
            bad(f"{name}.epochs", f"is {phase.epochs}: it must be at least 1")
        if phase.max_steps is not None and phase.max_steps < 1:
            bad(f"{name}.max_steps", "must be at least 1, or null for no cap")
        micro = phase.micro_batch_size_per_rank
        if micro != "auto" and micro < 1:
            bad(f"{name}.micro_batch_size_per_rank", "must be at least 1, or auto")
        if phase.global_batch_size is not None and phase.global_batch_size < (1 if micro == "auto" else micro):
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


def _check_cl(cfg: Config, bad: Bad) -> None:
    cl = cfg.cl
    for key in ("min_ratio", "max_ratio"):
        value = getattr(cl, key)
        if value is not None and value < 1.0:
            bad(f"cl.{key}", f"is {value}: an oversampling ratio must be >= 1")
    ratios = cfg.imbalance_ratios()
    if ratios is not None and ratios[0] > ratios[1]:
        bad("cl.min_ratio", f"({ratios[0]}) is above cl.max_ratio ({ratios[1]}): lower min_ratio or raise max_ratio")
    if cl.temperature <= 0:
        bad("cl.temperature", "must be > 0, e.g. 0.1")
    if not 0.0 <= cl.copy_stopword_deletion <= 1.0:
        bad("cl.copy_stopword_deletion", "must be in [0, 1]")
    if cl.copy_min_words < 1:
        bad("cl.copy_min_words", "must be at least 1")
    if cl.examples_per_class < 2:
        bad("cl.examples_per_class", "must be at least 2 (a group needs a positive pair)")
    if cl.embed_chunk_size is not None and cl.embed_chunk_size < 1:
        bad("cl.embed_chunk_size", "must be at least 1 (texts per cached chunk), or null to embed in one pass")
    if cl.loss == "supcon" and cl.mode == "pair":
        bad("cl.loss", "supcon needs cl.mode: in_batch (it compares each example with the whole batch)")
    levels = 1 + len(cfg.data.hierarchy_fields)
    if cl.level_weights is not None:
        if len(cl.level_weights) != levels:
            bad("cl.level_weights", f"has {len(cl.level_weights)} weights for {levels} label levels: give {levels}")
        elif any(w < 0 for w in cl.level_weights) or sum(cl.level_weights) <= 0:
            bad("cl.level_weights", "must be >= 0 with a positive sum")


def _check_variant_ratios(cfg: Config, bad: Bad) -> None:
    """no_imb and extra_imb fix the imbalance preset: an explicit cl ratio that disagrees with it is an error."""
    forced = VARIANT_IMBALANCE.get(cfg.run.variant)
    if forced is None:
        return
    preset = IMBALANCE_PRESETS[forced]
    for i, key in enumerate(("min_ratio", "max_ratio")):
        value = getattr(cfg.cl, key)
        if value is None or (preset is not None and value == preset[i]):
            continue
        trains = "without a correction" if preset is None else f"with the {forced} preset {preset}"
        bad(
            f"cl.{key}",
            f"is {value}, but run.variant {cfg.run.variant} trains {trains}: remove cl.{key}, or set your own ratios"
            f" with run.variant=three_phase and cl.imbalance={forced if preset else 'paper'}",
        )


def _check_ft_and_joint(cfg: Config, bad: Bad) -> None:
    if cfg.ft.patience < 1:
        bad("ft.patience", "must be at least 1")
    if cfg.ft.head_hidden < 1:
        bad("ft.head_hidden", "must be at least 1")
    if not 0.0 <= cfg.ft.dropout < 1.0:
        bad("ft.dropout", "must be in [0, 1)")
    if cfg.joint.dae_weight < 0 or cfg.joint.cl_weight < 0 or cfg.joint.dae_weight + cfg.joint.cl_weight == 0:
        bad("joint.dae_weight", "and joint.cl_weight must be >= 0 with a positive sum")


def _check_deepspeed(cfg: Config, bad: Bad) -> None:
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        bad("deepspeed.zero_stage", f"is {cfg.deepspeed.zero_stage}: use 0, 1, 2 or 3")
    if cfg.deepspeed.offload != "none" and cfg.deepspeed.zero_stage == 0:
        bad("deepspeed.offload", "needs deepspeed.zero_stage 1, 2 or 3")
    if cfg.deepspeed.offload == "optimizer_and_params" and cfg.deepspeed.zero_stage != 3:
        bad("deepspeed.offload", "optimizer_and_params needs deepspeed.zero_stage: 3")


def _check_lora(cfg: Config, bad: Bad) -> None:
    """The lora section (its target modules are checked against the model in preflight.py)."""
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


def _check_checkpoint(cfg: Config, bad: Bad) -> None:
    if cfg.checkpoint.every_steps < 1:
        bad("checkpoint.every_steps", "must be at least 1")
    if cfg.checkpoint.keep_last < 1:
        bad("checkpoint.keep_last", "must be at least 1 (the newest checkpoint is what a resume needs)")
