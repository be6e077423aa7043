"""The run configuration's schema: one dataclass per section, one attribute per key, each with a one-line
docstring under it (what `dcl-dist keys` prints and `keys.field_docs` reads), and the variants' phases.

Reading it from YAML and overrides, and checking it, live beside it: yaml_file, overrides, build, checks, preflight,
load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

VARIANTS: dict[str, tuple[str, ...]] = {
    "three_phase": ("dae", "cl", "ft"),
    "joint": ("joint", "ft"),
    "dae_ft": ("dae", "ft"),
    "cl_ft": ("cl", "ft"),
    "ft": ("ft",),
    "no_imb": ("dae", "cl", "ft"),
    "extra_imb": ("dae", "cl", "ft"),
}
"""Each variant's phases, in order (docs/METHOD.md, "Variants")."""

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
    """Phase 1 adds a Dense(hidden, hidden, tanh) bottleneck after pooling (docs/METHOD.md Fig. 1a)."""
    max_length: int | Literal["auto"] = "auto"
    """Tokens kept per text (longer texts are truncated and counted); auto: the model's limit, at most 512."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel: sdpa (fused, fastest) or eager (reference)."""
    compile: bool = False
    """torch.compile the transformer bodies (not with ZeRO-3). Off: compiling costs about a minute per shape family
    on the CPU, more than a short CPU run gains; on GPUs `COMPILE=1 bash benchmarks/gpu.sh` measures it."""
    packing: Literal["auto", "always", "never"] = "auto"
    """Pack several texts per row so no compute goes to padding: auto when it saves >= 10% of a batch's slots."""


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
    """Coarser label fields for hierarchical contrastive targets, finest first after label_field (METHOD eq. 3)."""
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
    """Fill batches with texts of similar length (less padding): in memory (not cl in_batch), streamed (dae, ft)."""
    num_workers: int | None = None
    """DataLoader worker processes that tokenise ahead of the model; null: 2 on a GPU, 0 on a CPU."""


@dataclass
class PhaseConfig:
    """Optimisation settings that every phase has."""

    epochs: int = 1
    """Passes over the phase's training data."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (caps epochs); null: no cap."""
    micro_batch_size_per_rank: int | Literal["auto"] = 16
    """Examples (or pairs) per rank and forward pass; auto: the largest that fits the GPU (16 on a CPU)."""
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
    embed_chunk_size: int | None = None
    """Cached embeddings: embed each micro-batch in chunks of this many texts, recomputed in backward (cl, joint)."""


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
    mixed_precision: Literal["autocast", "deepspeed"] = "autocast"
    """bf16/fp16 training: autocast (fp32 weights, torch.autocast, one fused AdamW) or deepspeed (16-bit weights)."""
    config_file: str | None = None
    """A DeepSpeed JSON to use instead of the shipped configs/deepspeed/zero<stage>.json ("auto" values filled)."""


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Write a resumable checkpoint every this many optimiser steps (and at the end of each phase)."""
    keep_last: int = 2
    """Checkpoints kept per phase; older ones are deleted once a newer one is complete."""
    keep_finished: bool = False
    """Keep a phase's checkpoints/ and best/ once its artifact is complete; false: delete them then (not needed)."""


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
    report: bool = True
    """Write <run.dir>/report (report.html with every figure embedded, and the figures as PNGs) at the end of train."""


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
    """TensorBoard, progress bar and the run report."""

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
