import os
import signal

import pytest
import torch

from dcl_dist import interrupt


def test_stop_signals_set_the_request_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.stop_on_signals():
        assert interrupt.requested() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal does not replace the first
        assert interrupt.requested() == "SIGUSR1"
        assert "stopped on SIGUSR1 at dae step 3" in str(interrupt.stopped("at dae step 3 of 9"))
    assert signal.getsignal(signal.SIGTERM) is before
    assert interrupt.requested() is None  # the request ends with its block
    with interrupt.stop_on_signals():
        assert interrupt.requested() is None  # each block starts afresh


def test_a_second_ctrl_c_aborts():
    with interrupt.stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_outside_the_loop_on_one_rank_a_request_stops_at_once():
    with interrupt.stop_on_signals(at_once=True):
        with pytest.raises(interrupt.StopNow) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.signal_name == "SIGTERM"


def test_inside_the_loop_a_request_waits_for_the_checkpoint_and_stops_at_once_after_it():
    with interrupt.stop_on_signals(at_once=True):
        with pytest.raises(interrupt.StopNow):
            with interrupt.answered_with_a_checkpoint():
                os.kill(os.getpid(), signal.SIGUSR1)
                assert interrupt.requested() == "SIGUSR1"  # recorded, not raised: the loop answers it


def test_an_evaluation_stops_between_batches():
    from dcl_dist.evaluation import sharded_apply

    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def fn(batch):
        seen.append(batch["x"].tolist())
        if len(seen) == 2 and interrupt.requested() is None and signal.getsignal(signal.SIGTERM) is not before:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch["x"].float()

    def collate(items):
        return {"x": torch.tensor(items)}

    assert sharded_apply(fn, collate, 6, 2).tolist() == [0, 1, 2, 3, 4, 5]  # no handlers: no check
    seen.clear()
    with interrupt.stop_on_signals():
        with pytest.raises(interrupt.EvaluationStopped, match="stopped on SIGTERM during an evaluation"):
            sharded_apply(fn, collate, 6, 2)
    assert seen == [[0, 1], [2, 3]]  # the third batch never ran
