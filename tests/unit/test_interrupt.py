import os
import signal

import pytest

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
