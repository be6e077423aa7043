"""The one training loop every phase uses: optimiser steps over micro-batches, gradient accumulation,
evaluation and checkpoint cadence, early stopping, exact resume, TensorBoard and a progress bar on rank 0.
"""

from __future__ import annotations

import logging
import math
import random
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcl_dist import dist, interrupt
from dcl_dist import engine as ds
from dcl_dist.config import Config, PhaseConfig
from dcl_dist.errors import CheckpointWriteError, NonFiniteLossError, TrainingError

log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


@dataclass
class PhaseRun:
    """Everything the loop needs from a phase."""

    name: str
    engine: Any
    steps_per_epoch: int
    batches: Callable[[int, int, Any], Iterable[dict]]
    """(epoch, first step, data state or None) -> this rank's micro-batches of that epoch from that step on.

    A micro-batch may carry "data_state": where its source stands once it is consumed (a stream's shard, offset
    and buffer). The loop saves the last one in each rank's checkpoint and hands it back on resume and at the
    start of every later epoch.
    """
    loss: Callable[[Any, dict], torch.Tensor]
    """(engine, batch on device) -> scalar loss of the micro-batch."""
    evaluate: Callable[[], dict[str, float]] | None = None
    """Validation metrics (every rank calls it and gets the same dict)."""
    select_metric: str | None = None
    """Metric (higher is better) whose best value is kept in <phase>/best and ends training after `patience`."""
    patience: int | None = None


@dataclass
class LoopState:
    """What a checkpoint records about the loop (JSON); RNG states are saved per rank beside it."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list[dict] = field(default_factory=list)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Logger:
    """TensorBoard events (one run per phase under <run.dir>/tb) and a tqdm bar, on rank 0 only."""

    def __init__(self, run_dir: Path, phase: str, cfg: Config, total_steps: int, first_step: int):
        self.phase = phase
        self.writer = None
        self.bar = None
        if not dist.is_main():
            return
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events a crashed run wrote after the checkpoint we resume from (first_step, whose
            # own events were written before its checkpoint, stays)
            self.writer = SummaryWriter(str(run_dir / "tb" / phase), purge_step=first_step + 1 if first_step else None)
        if cfg.logging.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=first_step, desc=phase, dynamic_ncols=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(f"{self.phase}/{k}", v, step)

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


PROJECTOR_MAX_POINTS = 2000
"""Validation embeddings shown in TensorBoard's projector (a seeded subset beyond this)."""


def log_embeddings(
    run_dir: Path,
    phase: str,
    cfg: Config,
    step: int,
    vectors: torch.Tensor,
    labels: list[str],
    scalars: dict[str, float],
) -> None:
    """The encoder's validation embeddings (projector, with their labels) and diagnostics, on rank 0."""
    if not dist.is_main() or not cfg.logging.tensorboard:
        return
    from torch.utils.tensorboard import SummaryWriter

    keep = np.random.default_rng(cfg.run.seed).permutation(len(labels))[:PROJECTOR_MAX_POINTS]
    keep.sort()
    with SummaryWriter(str(run_dir / "tb" / phase)) as writer:
        for k, v in scalars.items():
            if math.isfinite(v):
                writer.add_scalar(f"{phase}/embedding_{k}", v, step)
        writer.add_embedding(
            vectors[keep], metadata=[labels[i] for i in keep], tag=f"{phase}/validation", global_step=step
        )


def total_steps(p: PhaseConfig, steps_per_epoch: int) -> int:
    full = p.epochs * steps_per_epoch
    return min(full, p.max_steps) if p.max_steps is not None else full


def resume_note(phase: str, path: Path, saved: dict, state: LoopState, steps: int, steps_per_epoch: int) -> str:
    """What a resumed run logs: where it starts again, and how the world size and batch compare with the saved run."""
    world, batch = dist.world_size(), saved.get("global_batch_size")
    note = (
        f"{phase}: resuming from {path}: step {state.step} of {steps}, epoch {state.epoch}"
        f" (step {state.step_in_epoch} of {steps_per_epoch} in it)"
    )
    if saved.get("world_size", world) == world:
        return note + f", on {world} ranks as before: RNG and data position restored exactly"
    return note + (
        f"; written on {saved['world_size']} ranks, now {world}: the same global batch of {batch}, each step the same"
        " examples, with new dropout streams"
    )


def train(run: PhaseRun, cfg: Config, phase_dir: Path) -> LoopState:
    """Train one phase to its end (or early stop), resuming from <phase_dir>/checkpoints if it holds one.

    A stop request (interrupt.stop_on_signals) ends the phase at the next step boundary with a checkpoint and
    raises errors.Interrupted on every rank.
    """
    try:
        return _train(run, cfg, phase_dir)
    except BaseException as e:
        # The loop's DataLoader workers outlive stop signals (interrupt.ignore_in_worker), so the interpreter's exit
        # would wait on them forever (measured: a crashed rank hung). Clearing the frames that hold their iterator
        # shuts them down here, whatever the exception.
        traceback.clear_frames(e.__traceback__)
        raise


def _train(run: PhaseRun, cfg: Config, phase_dir: Path) -> LoopState:
    p: PhaseConfig = getattr(cfg, run.name)
    engine = run.engine
    device = dist.device()
    steps = total_steps(p, run.steps_per_epoch)
    accumulation = engine.gradient_accumulation_steps()
    ckpt_root = phase_dir / ds.CHECKPOINTS

    state = LoopState()
    data_state = None
    latest = ds.latest_checkpoint(ckpt_root)
    if latest is not None:
        saved, rank_state = ds.load_checkpoint(engine, latest)
        state = LoopState(**{k: v for k, v in saved.items() if k in LoopState.__dataclass_fields__})
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
            data_state = rank_state.get("data")
        if dist.is_main():
            log.info(resume_note(run.name, latest, saved, state, steps, run.steps_per_epoch))

    if state.finished:
        return state
    if dist.any_true(interrupt.requested() is not None):  # the request came while the phase was starting
        raise interrupt.stopped(f"at {run.name} step {state.step} of {steps}, before training on")
    logger = Logger(phase_dir.parent, run.name, cfg, steps, state.step)

    def save(root: Path, rank_state: dict, keep_last: int) -> None:
        try:
            ds.save_checkpoint(engine, root, state.step, vars(state), rank_state, keep_last)
        except CheckpointWriteError:
            logger.close()
            raise

    def checkpoint() -> None:
        save(ckpt_root, {"rng": rng_state(), "data": data_state}, cfg.checkpoint.keep_last)

    def evaluate() -> bool:
        """Run validation; returns True when training should stop early."""
        if run.evaluate is None:
            return False
        engine.eval()
        with torch.no_grad():
            metrics = run.evaluate()
        engine.train()
        logger.scalars({f"val_{k}": v for k, v in metrics.items()}, state.step)
        state.history.append({"step": state.step, "epoch": state.epoch, **metrics})
        if dist.is_main():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            log.info("%s step %d: validation %s", run.name, state.step, shown)
        if run.select_metric is None:
            return False
        value = metrics[run.select_metric]
        if state.best is None or value > state.best:
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            # named by step: the new best is complete before the old one is deleted
            save(phase_dir / "best", {"rng": rng_state()}, keep_last=1)
            return False
        state.bad_evals += 1
        return run.patience is not None and state.bad_evals >= run.patience

    engine.train()
    window_start, window_samples, window_tokens = time.perf_counter(), 0.0, 0.0
    stop = False
    while not stop and state.step < steps and state.epoch < p.epochs:
        micro_batches = iter(run.batches(state.epoch, state.step_in_epoch, data_state))
        while state.step_in_epoch < run.steps_per_epoch and state.step < steps:
            sums = torch.zeros(2, device=device)  # loss, real tokens: read once per step (one device sync)
            samples = 0
            for _ in range(accumulation):
                batch = next(micro_batches)
                data_state = batch.pop("data_state", data_state)
                batch = to_device(batch, device)
                try:
                    loss = run.loss(engine, batch)
                    engine.backward(loss)
                    engine.step()
                except RuntimeError as e:
                    if not is_out_of_memory(e):
                        raise
                    logger.close()
                    raise out_of_memory(run.name, p, state.step + 1, dist.world_size(), accumulation) from None
                sums[0] += loss.detach().float()
                sums[1] += sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask"))
                samples += next(v for k, v in batch.items() if k.endswith("input_ids")).shape[0]  # a pair: two
            state.step += 1
            state.step_in_epoch += 1
            loss_sum, tokens = sums.tolist()
            # the stop request rides on the step's one reduction: every rank learns of it at the same step
            total_loss, total_samples, total_tokens, stops = dist.sum_floats(
                loss_sum, samples, tokens, float(interrupt.requested() is not None)
            )
            mean_loss = total_loss / (accumulation * dist.world_size())
            if not math.isfinite(mean_loss):
                logger.close()
                raise NonFiniteLossError(
                    f"phase {run.name}: the loss became {mean_loss} at step {state.step}. The last good checkpoint is"
                    f" {ds.latest_checkpoint(ckpt_root) or 'none (no checkpoint was written yet)'}: lower"
                    f" {run.name}.lr, keep {run.name}.max_grad_norm > 0,"
                    " or use deepspeed.precision: bf16 instead of fp16"
                )
            window_samples += total_samples
            window_tokens += total_tokens
            logger.advance(mean_loss)
            if state.step % p.log_every_steps == 0 or state.step == steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                logger.scalars(
                    {
                        "loss": mean_loss,
                        "lr": ds.learning_rate(engine),
                        "grad_norm": ds.grad_norm(engine),
                        "samples_per_s": window_samples / elapsed,
                        "tokens_per_s": window_tokens / elapsed,
                    },
                    state.step,
                )
                window_start, window_samples, window_tokens = time.perf_counter(), 0.0, 0.0
            epoch_done = state.step_in_epoch == run.steps_per_epoch
            due = p.eval_every_steps is not None and state.step % p.eval_every_steps == 0
            if due or (p.eval_every_steps is None and epoch_done) or state.step == steps:
                if evaluate():
                    state.stopped_early = stop = True
                    break
            if state.step % cfg.checkpoint.every_steps == 0 and state.step < steps:
                checkpoint()
            if stops and state.step < steps:
                if state.step % cfg.checkpoint.every_steps:
                    checkpoint()
                logger.close()
                saved = ds.latest_checkpoint(ckpt_root)
                raise interrupt.stopped(f"at {run.name} step {state.step} of {steps}, checkpoint {saved}")
        if state.step_in_epoch >= run.steps_per_epoch:
            state.epoch += 1
            state.step_in_epoch = 0  # data_state goes on: a stream's next epoch starts where this one stopped
    state.finished = True
    checkpoint()
    logger.close()
    return state


def out_of_memory(phase: str, p: PhaseConfig, step: int, world: int, accumulation: int) -> TrainingError:
    """The message for a step that ran out of memory: a smaller micro-batch with the same global batch."""
    micro = p.micro_batch_size_per_rank
    smaller = max(1, micro // 2)
    global_batch = micro * world * accumulation
    return TrainingError(
        f"phase {phase}: out of memory at step {step} with {phase}.micro_batch_size_per_rank={micro}. Try"
        f" {phase}.micro_batch_size_per_rank={smaller} {phase}.global_batch_size={global_batch} (the same global"
        " batch, more accumulation), a shorter model.max_length, or deepspeed.zero_stage=3 / deepspeed.offload"
    )


def load_best(engine, phase_dir: Path) -> bool:
    """Put the best validation weights (written by train) back into the engine; False if there are none."""
    best = ds.latest_checkpoint(phase_dir / "best")
    if best is None:
        return False
    ds.load_checkpoint(engine, best, load_optimizer=False)
    return True
