"""The training loop's own failures: a NaN loss and running out of memory end in one message naming the step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dcl_dist import engine, loop
from dcl_dist.config import load_config
from dcl_dist.errors import NonFiniteLossError, TrainingError
from dcl_dist.rundir import RunDir
from helpers import tiny_run


def linear_phase_run(tmp_path, loss_at_step):
    """Phase ft's loop over a Linear layer and random batches; loss_at_step(n, loss) makes the n-th loss."""
    cfg = load_config(  # no data file or model is read: nothing to check on this machine
        None,
        tiny_run(
            None,
            "unused.jsonl",
            tmp_path,
            "ft.micro_batch_size_per_rank=2",
            "ft.epochs=1",
            "logging.tensorboard=false",
            "checkpoint.every_steps=2",
        ),
        preflight=False,
    )
    model = torch.nn.Linear(4, 2)
    model_engine = engine.initialize(model, cfg, "ft", total_steps=10, hidden_size=4)
    calls = {"n": 0}

    def batches(epoch, start, data_state=None):
        for _ in range(start, 10):
            yield {"input_ids": torch.randn(2, 4), "attention_mask": torch.ones(2, 4, dtype=torch.long)}

    def step_loss(model_engine, batch):
        calls["n"] += 1
        return loss_at_step(calls["n"], model_engine(batch["input_ids"]).sum())

    feed = SimpleNamespace(steps_per_epoch=10, batches=batches)
    return loop.PhaseRun("ft", model_engine, feed, step_loss), cfg


def test_nan_loss_names_the_step_and_the_last_good_checkpoint(tmp_path):
    run, cfg = linear_phase_run(tmp_path, lambda n, loss: loss * float("nan") if n == 5 else loss)
    with pytest.raises(NonFiniteLossError, match=r"at step 5\. The last good checkpoint is .*step_00000004"):
        loop.train(run, cfg, RunDir(tmp_path).phase("ft"))
    assert (tmp_path / "ft" / "checkpoints" / "step_00000004" / "complete.json").is_file()


def test_out_of_memory_names_a_micro_batch_that_keeps_the_global_batch(tmp_path):
    def oom(n, loss):
        if n == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss

    run, cfg = linear_phase_run(tmp_path, oom)
    with pytest.raises(TrainingError) as err:
        loop.train(run, cfg, RunDir(tmp_path).phase("ft"))
    message = str(err.value)
    assert "out of memory at step 3" in message
    assert "ft.micro_batch_size_per_rank=1 ft.global_batch_size=2" in message


def test_other_errors_pass_through(tmp_path):
    def broken(n, loss):
        raise RuntimeError("shape mismatch")

    run, cfg = linear_phase_run(tmp_path, broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        loop.train(run, cfg, RunDir(tmp_path).phase("ft"))
