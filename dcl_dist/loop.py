"""The one training loop every phase uses, in named steps: restore, train step (gradient accumulation and the
step's one reduction across ranks), log, evaluate (early stopping on the best validation metric), and
checkpoint or stop.
"""

from __future__ import annotations

import logging
import math
import random
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from dcl_dist import checkpoints, dist, engine, interrupt, resume
from dcl_dist.config import Config, PhaseConfig
from dcl_dist.errors import NonFiniteLossError, TrainingError
from dcl_dist.logs import library_output_silenced
from dcl_dist.monitor import Monitor
from dcl_dist.rundir import PhaseDir

log = logging.getLogger(__name__)


class Feed(Protocol):
    """Where a phase's training batches come from (phases/feed.py builds one: in memory or from a stream)."""

    steps_per_epoch: int

    def batches(self, epoch: int, start: int, data_state: Any) -> Iterable[dict]:
        """(epoch, first step, data state or None) -> this rank's micro-batches of that epoch from that step on.

        A micro-batch may carry "data_state": where its source stands once it is consumed (a stream's shard,
        offset and buffer). The loop saves the last one in each rank's checkpoint and hands it back on resume and
        at the start of every later epoch.
        """
        ...


@dataclass
class PhaseRun:
    """Everything the loop needs from a phase."""

    name: str
    model_engine: Any
    feed: Feed
    loss: Callable[[Any, dict], torch.Tensor]
    """(model engine, batch on device) -> scalar loss of the micro-batch."""
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
    eval_pending: bool = False
    """A stop request ended this step's evaluation midway: it runs first when the phase resumes."""
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time in the loop (steps, evaluations, checkpoints), summed over every run that worked on the phase."""
    samples: int = 0
    """Training examples (a pair counts two) put through the model, over all ranks."""


def total_steps(p: PhaseConfig, steps_per_epoch: int) -> int:
    full = p.epochs * steps_per_epoch
    return min(full, p.max_steps) if p.max_steps is not None else full


def train(run: PhaseRun, cfg: Config, phase_dir: PhaseDir, resume_from: resume.Resume | None = None) -> LoopState:
    """Train one phase to its end (or early stop), first restoring `resume_from` (resume.find's decision).

    A stop request (interrupt.stop_on_signals) ends the phase at the next step boundary with a checkpoint and
    raises errors.Interrupted on every rank.
    """
    try:
        with interrupt.answered_with_a_checkpoint():
            return _Training(run, cfg, phase_dir).fit(resume_from)
    except BaseException as e:
        # The loop's DataLoader workers outlive stop signals (interrupt.ignore_in_worker), so the interpreter's exit
        # would wait on them forever (measured: a crashed rank hung). Clearing the frames that hold their iterator
        # shuts them down here, whatever the exception.
        traceback.clear_frames(e.__traceback__)
        raise


def load_best(model_engine, phase_dir: PhaseDir) -> bool:
    """Put the best validation weights (written by train) back into the engine; False if there are none.

    A damaged best checkpoint stops the phase (exit 3) naming the file: there is no earlier one to fall back to.
    """
    best = checkpoints.latest(phase_dir.best)
    if best is None:
        return False
    resume.check_best(best)
    with library_output_silenced():  # DeepSpeed's ZeRO-3 weights-only load prints its parsing on every rank
        checkpoints.load_weights(model_engine, best)
    return True


class _Training:
    """One phase's training: the loop's state, and its steps as methods."""

    def __init__(self, run: PhaseRun, cfg: Config, phase_dir: PhaseDir):
        self.run, self.cfg, self.phase_dir = run, cfg, phase_dir
        self.p: PhaseConfig = getattr(cfg, run.name)
        self.model_engine = run.model_engine
        self.device = dist.device()
        self.steps = total_steps(self.p, run.feed.steps_per_epoch)
        self.accumulation = self.model_engine.gradient_accumulation_steps()
        self.state = LoopState()
        self.data_state: Any = None
        self.window = _Throughput()
        self.clock = (time.perf_counter(), 0.0)  # (when this run's loop started, the state's seconds then)

    def fit(self, resume_from: resume.Resume | None) -> LoopState:
        state = self.state = self.restore(resume_from)
        if state.finished:
            return state
        if dist.any_true(interrupt.requested() is not None):  # the request came while the phase was starting
            raise interrupt.stopped(f"at {self.run.name} step {state.step} of {self.steps}, before training on")
        self.monitor = Monitor(self.phase_dir, self.cfg, self.steps, state.step)
        self.clock = (time.perf_counter(), state.seconds)
        try:
            stopped_early = state.eval_pending and self.evaluate()  # a stop request cut it short: it comes first
            state.stopped_early = state.stopped_early or stopped_early
            self.model_engine.train()
            self.window.reset()
            while not stopped_early and state.step < self.steps and state.epoch < self.p.epochs:
                stopped_early = self.epoch()
            state.finished = True
            self.checkpoint()
        finally:
            self.monitor.close()
        return state

    def restore(self, resume_from: resume.Resume | None) -> LoopState:
        """The loop state to go on from: the checkpoint's (model, optimiser, schedule, RNG, data position) or new."""
        if resume_from is None:
            return LoopState()
        rank_state = checkpoints.load(self.model_engine, resume_from.checkpoint, resume_from.exact)
        state = LoopState(**{k: v for k, v in resume_from.saved.items() if k in LoopState.__dataclass_fields__})
        restored = dist.all_gather_object(rank_state is not None)
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
            self.data_state = rank_state.get("data")
        if state.best_step is not None and checkpoints.latest(self.phase_dir.best) is None:
            if dist.is_main():
                log.warning(
                    "%s: its best weights (step %d) are not in %s (moved away?): it picks its best weights among the"
                    " evaluations from here on, or ends with its last weights if it has finished",
                    self.run.name,
                    state.best_step,
                    self.phase_dir.best,
                )
            state.best, state.best_step = None, None
        if dist.is_main():
            where = f"step {state.step} of {self.steps}, epoch {state.epoch}"
            in_epoch = f"step {state.step_in_epoch} of {self.run.feed.steps_per_epoch} in it"
            log.info(
                "%s: resuming from %s: %s (%s), %s",
                self.run.name,
                resume_from.checkpoint,
                where,
                in_epoch,
                resume_from.describe(all(restored)),
            )
        return state

    def epoch(self) -> bool:
        """Train on to the end of the current epoch (or of the phase); True when validation stops it early."""
        state, steps_per_epoch = self.state, self.run.feed.steps_per_epoch
        micro_batches = iter(self.run.feed.batches(state.epoch, state.step_in_epoch, self.data_state))
        stopped_early = False
        while state.step_in_epoch < steps_per_epoch and state.step < self.steps:
            mean_loss, stop_requested = self.train_step(micro_batches)
            self.log(mean_loss)
            if self.evaluation_due() and self.evaluate():
                state.stopped_early = stopped_early = True
                break
            if state.step % self.cfg.checkpoint.every_steps == 0 and state.step < self.steps:
                self.checkpoint()
            if stop_requested and state.step < self.steps:
                self.stop()
        if state.step_in_epoch >= steps_per_epoch:
            state.epoch += 1
            state.step_in_epoch = 0  # data_state goes on: a stream's next epoch starts where this one stopped
        return stopped_early

    def train_step(self, micro_batches: Iterator[dict]) -> tuple[float, bool]:
        """One optimiser step over `accumulation` micro-batches, then the step's one reduction across ranks.

        Returns (the loss averaged over ranks and micro-batches, whether any rank received a stop request).
        """
        sums = torch.zeros(2, device=self.device)  # loss, real tokens: read once per step (one device sync)
        samples = 0
        for _ in range(self.accumulation):
            waited = time.perf_counter()
            batch = next(micro_batches)
            self.window.waited(time.perf_counter() - waited)
            self.data_state = batch.pop("data_state", self.data_state)
            batch = to_device(batch, self.device)
            loss = self.forward_backward(batch)
            sums[0] += loss.detach().float()
            sums[1] += sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask"))
            samples += next(v for k, v in batch.items() if k.endswith("input_ids")).shape[0]  # a pair: two
        self.state.step += 1
        self.state.step_in_epoch += 1
        loss_sum, tokens = sums.tolist()
        # the stop request rides on the step's one reduction: every rank learns of it at the same step
        total_loss, total_samples, total_tokens, stops = dist.sum_floats(
            loss_sum, samples, tokens, float(interrupt.requested() is not None)
        )
        mean_loss = total_loss / (self.accumulation * dist.world_size())
        if not math.isfinite(mean_loss):
            raise self.non_finite(mean_loss)
        self.window.add(total_samples, total_tokens)
        self.state.samples += int(total_samples)
        return mean_loss, bool(stops)

    def forward_backward(self, batch: dict) -> torch.Tensor:
        """The micro-batch's loss, its gradients accumulated (DeepSpeed's step applies them at the boundary)."""
        try:
            loss = self.run.loss(self.model_engine, batch)
            self.model_engine.backward(loss)
            self.model_engine.step()
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            raise out_of_memory(
                self.run.name, self.p, self.state.step + 1, dist.world_size(), self.accumulation
            ) from None
        return loss

    def non_finite(self, mean_loss: float) -> NonFiniteLossError:
        name = self.run.name
        return NonFiniteLossError(
            f"phase {name}: the loss became {mean_loss} at step {self.state.step}. The last good checkpoint is"
            f" {checkpoints.latest(self.phase_dir.checkpoints) or 'none (no checkpoint was written yet)'}: lower"
            f" {name}.lr, keep {name}.max_grad_norm > 0, or use deepspeed.precision: bf16 instead of fp16"
        )

    def log(self, mean_loss: float) -> None:
        """The progress bar every step; loss, learning rate, gradient norm and throughput every log_every_steps."""
        self.monitor.advance(mean_loss)
        step = self.state.step
        if step % self.p.log_every_steps == 0 or step == self.steps:
            values = {
                "loss": mean_loss,
                "lr": engine.learning_rate(self.model_engine),
                "grad_norm": engine.grad_norm(self.model_engine),
            }
            self.monitor.scalars({**values, **self.window.rates()}, step)
            self.window.reset()

    def evaluation_due(self) -> bool:
        p, step = self.p, self.state.step
        epoch_done = self.state.step_in_epoch == self.run.feed.steps_per_epoch
        due = p.eval_every_steps is not None and step % p.eval_every_steps == 0
        return due or (p.eval_every_steps is None and epoch_done) or step == self.steps

    def evaluate(self) -> bool:
        """Run validation, keep the best weights; returns True when training should stop early."""
        run, state = self.run, self.state
        if run.evaluate is None:
            return False
        state.eval_pending = False
        self.model_engine.eval()
        try:
            with torch.no_grad(), engine.autocast(self.model_engine):
                metrics = run.evaluate()
        except interrupt.EvaluationStopped:
            # the step is trained: its checkpoint is written without the evaluation, which runs first on resume
            state.eval_pending = True
            self.checkpoint()
            saved = checkpoints.latest(self.phase_dir.checkpoints)
            raise interrupt.stopped(
                f"at {run.name} step {state.step} of {self.steps} during its evaluation (it runs first when the phase"
                f" resumes), checkpoint {saved}"
            ) from None
        self.model_engine.train()
        self.monitor.scalars({f"val_{k}": v for k, v in metrics.items()}, state.step)
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
            self.save(self.phase_dir.best, {"rng": rng_state()}, keep_last=1)
            return False
        state.bad_evals += 1
        return run.patience is not None and state.bad_evals >= run.patience

    def checkpoint(self) -> None:
        self.save(
            self.phase_dir.checkpoints, {"rng": rng_state(), "data": self.data_state}, self.cfg.checkpoint.keep_last
        )

    def save(self, root, rank_state: dict, keep_last: int) -> None:
        started, before = self.clock
        self.state.seconds = before + time.perf_counter() - started
        checkpoints.save(self.model_engine, root, self.state.step, vars(self.state), rank_state, keep_last)

    def stop(self) -> None:
        """Honour a stop request: a checkpoint at this step (unless one was just written), then Interrupted."""
        if self.state.step % self.cfg.checkpoint.every_steps:
            self.checkpoint()
        saved = checkpoints.latest(self.phase_dir.checkpoints)
        raise interrupt.stopped(f"at {self.run.name} step {self.state.step} of {self.steps}, checkpoint {saved}")


class _Throughput:
    """Samples and real tokens per second over the steps since the last log, and the share of that time spent
    waiting for the next batch (the loop syncs with the device once a step, so on a GPU that is idle time)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.samples, self.tokens, self.waiting = time.perf_counter(), 0.0, 0.0, 0.0

    def add(self, samples: float, tokens: float) -> None:
        self.samples += samples
        self.tokens += tokens

    def waited(self, seconds: float) -> None:
        self.waiting += seconds

    def rates(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "samples_per_s": self.samples / elapsed,
            "tokens_per_s": self.tokens / elapsed,
            "data_wait_share": self.waiting / elapsed,
        }


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def rng_state() -> dict:
    # numpy's key array as a tensor: rank files load with torch.load(weights_only=True), which refuses numpy objects
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.copy()), position, has_gauss, cached)
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


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
