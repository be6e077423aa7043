"""Quiet logs: each library warning shown once (on rank 0 only), the ones nobody can act on never, DeepSpeed's
accelerator warning dropped, and what a library prints during a ZeRO-3 weights load swallowed."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest

from dcl_dist import logs


@pytest.fixture
def restored():
    """Whatever a test sets up, the warnings machinery and the DeepSpeed logger's filters come back afterwards."""
    shown, filters = warnings.showwarning, list(warnings.filters)
    deepspeed_filters = list(logging.getLogger("DeepSpeed").filters)
    yield
    warnings.showwarning = shown
    warnings.filters[:] = filters
    warnings._filters_mutated()  # noqa: SLF001 - the registries must forget what the test showed
    logging.getLogger("DeepSpeed").filters[:] = deepspeed_filters


def _warn_in_a_library(message: str, category: type[Warning], times: int) -> None:
    for _ in range(times):
        warnings.warn(message, category, stacklevel=1)
        # what a library's catch_warnings / simplefilter does: Python forgets what it showed, and shows it again
        warnings._filters_mutated()  # noqa: SLF001


def test_each_warning_once_and_the_silenced_never(restored, caplog):
    logs.quiet_warnings(rank=0)
    with caplog.at_level(logging.WARNING, logger=logs.WARNINGS_LOGGER):
        _warn_in_a_library("something a user may act on", UserWarning, 5)
        _warn_in_a_library("something else", UserWarning, 2)
        _warn_in_a_library("`torch.distributed.all_gather_into_tensor` is deprecated. Use ...", FutureWarning, 5)
        _warn_in_a_library("`torch.distributed.reduce_scatter_tensor` is deprecated. Use ...", FutureWarning, 5)
    shown = [r.getMessage() for r in caplog.records if r.name == logs.WARNINGS_LOGGER]
    assert len(shown) == 2
    assert shown[0].startswith("UserWarning: something a user may act on (")
    assert shown[1].startswith("UserWarning: something else (")


def test_other_ranks_show_no_library_warning(restored, caplog):
    logs.quiet_warnings(rank=1)
    with caplog.at_level(logging.WARNING, logger=logs.WARNINGS_LOGGER):
        _warn_in_a_library("something a user may act on", UserWarning, 3)
    assert [r for r in caplog.records if r.name == logs.WARNINGS_LOGGER] == []


def test_deepspeed_accelerator_warning_is_dropped_even_after_deepspeed_resets_its_logger(restored, capsys):
    logs.setup(rank=0)
    logger = logging.getLogger("DeepSpeed")
    # what deepspeed.utils.logging.create_logger does at import: its own level, handler, no propagation
    handler = logging.StreamHandler(sys.stdout)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        logger.warning("a DeepSpeed warning that says something")
    finally:
        logger.removeHandler(handler)
    out = capsys.readouterr().out
    assert "Setting accelerator to CPU" not in out and "a DeepSpeed warning that says something" in out


def test_library_output_is_swallowed_and_errors_still_raise(capsys):
    with logs.library_output_silenced():
        print("Processing zero checkpoint 'x'")
        print("Gathering sharded weights", file=sys.stderr)
    with pytest.raises(RuntimeError, match="still seen"), logs.library_output_silenced():
        raise RuntimeError("still seen")
    assert capsys.readouterr() == ("", "")
