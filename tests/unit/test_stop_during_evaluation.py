"""A stop request during an evaluation ends it between two batches: the step's checkpoint is written without it,
and the resumed phase runs that evaluation first, so that it goes on exactly as an uninterrupted one."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from test_loop_errors import linear_phase_run

from dcl_dist import checkpoints, interrupt, loop, resume
from dcl_dist.errors import Interrupted
from dcl_dist.evaluation import sharded_apply
from dcl_dist.rundir import RunDir


def evaluated_run(tmp_path, stop_in_evaluation: int | None = None):
    """linear_phase_run with an evaluation every 3 steps (3 batches over 6 fixed inputs); SIGINT during the
    second batch of evaluation number `stop_in_evaluation`."""
    torch.manual_seed(0)
    run, cfg = linear_phase_run(tmp_path, lambda n, loss: loss)
    cfg.ft.eval_every_steps = 3
    inputs = torch.arange(24, dtype=torch.float).reshape(6, 4) / 24
    evaluations = {"n": 0, "batches": 0}

    def evaluate():
        evaluations["n"] += 1

        def forward(batch):
            evaluations["batches"] += 1
            if evaluations["n"] == stop_in_evaluation and evaluations["batches"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return run.model_engine.module(batch["x"])

        outputs = sharded_apply(forward, lambda items: {"x": inputs[items]}, 6, 2)
        evaluations["batches"] = 0
        return {"accuracy": float(outputs.sum())}

    return loop.PhaseRun("ft", run.model_engine, run.feed, run.loss, evaluate, "accuracy", 100), cfg


def test_a_stop_during_an_evaluation_resumes_exactly(tmp_path):
    whole, cfg = evaluated_run(tmp_path / "whole")
    expected = loop.train(whole, cfg, RunDir(tmp_path / "whole").phase("ft"))
    assert [h["step"] for h in expected.history] == [3, 6, 9, 10]

    phase_dir = RunDir(tmp_path / "cut").phase("ft")
    first, cfg = evaluated_run(tmp_path / "cut", stop_in_evaluation=2)
    with interrupt.stop_on_signals(at_once=True):
        with pytest.raises(Interrupted, match="stopped on SIGINT at ft step 6 of 10 during its evaluation"):
            loop.train(first, cfg, phase_dir)
    saved = checkpoints.read_info(checkpoints.latest(phase_dir.checkpoints))
    assert saved["step"] == 6 and saved["eval_pending"] and [h["step"] for h in saved["history"]] == [3]

    second, cfg = evaluated_run(tmp_path / "cut")
    state = loop.train(second, cfg, phase_dir, resume.find(phase_dir, world_size=1))
    assert state.history == expected.history  # the cut evaluation ran first, with the same weights
    assert torch.equal(second.model_engine.module.weight, whole.model_engine.module.weight)
