"""micro_batch_size_per_rank: auto: the search for the largest micro-batch that fits, and the global batch kept
by accumulation (on a CPU auto is 16; the GPU probe's answer is stood in for)."""

from __future__ import annotations

import pytest

from dcl_dist.config import load_config
from dcl_dist.data.batch_plan import accumulation_steps, check_world
from dcl_dist.phases import batch_size
from dcl_dist.phases.context import PhaseContext


def test_search_doubles_until_out_of_memory_and_halves_below_the_first_try():
    assert batch_size.search(lambda m: m <= 100) == 64
    assert batch_size.search(lambda m: m <= 5000) == batch_size.MOST
    assert batch_size.search(lambda m: m <= 5) == 4
    assert batch_size.search(lambda m: False) == 1
    tried = []
    batch_size.search(lambda m: tried.append(m) or m <= 40)
    assert tried == [8, 16, 32, 64]  # stops at the first that does not fit


def test_largest_divisor_of_the_rank_share():
    assert batch_size.largest_divisor(64, 48) == 32
    assert batch_size.largest_divisor(96, 48) == 48
    assert batch_size.largest_divisor(30, 16) == 15


def _cfg(tmp_path, *extra):
    return load_config(None, [f"run.dir={tmp_path}", "data.train=unused.jsonl", *extra], preflight=False)


def test_auto_is_16_on_a_cpu_and_keeps_the_global_batch(tmp_path):
    cfg = _cfg(tmp_path, "ft.micro_batch_size_per_rank=auto", "ft.global_batch_size=64")
    assert check_world(cfg, "ft", 1) == []
    resolved = batch_size.fit_micro_batch(PhaseContext(cfg, None, None, "unused"), "ft")
    assert resolved.ft.micro_batch_size_per_rank == 16 and accumulation_steps(resolved, "ft", 1) == 4
    assert cfg.ft.micro_batch_size_per_rank == "auto"  # the pipeline's config (and settings) are left as they are


@pytest.mark.parametrize(("global_batch", "micro", "accumulation"), [(None, 48, 1), (64, 32, 2), (96, 48, 2)])
def test_the_probe_answer_divides_the_global_batch(tmp_path, monkeypatch, global_batch, micro, accumulation):
    monkeypatch.setattr(batch_size.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(batch_size, "_largest_that_fits", lambda ctx, phase: 48)
    extra = [] if global_batch is None else [f"dae.global_batch_size={global_batch}"]
    cfg = _cfg(tmp_path, "dae.micro_batch_size_per_rank=auto", *extra)
    resolved = batch_size.fit_micro_batch(PhaseContext(cfg, None, None, "unused"), "dae")
    assert resolved.dae.micro_batch_size_per_rank == micro
    assert accumulation_steps(resolved, "dae", 1) == accumulation


def test_auto_needs_a_global_batch_the_world_size_divides(tmp_path):
    cfg = _cfg(tmp_path, "cl.micro_batch_size_per_rank=auto", "cl.global_batch_size=63")
    assert "not divisible by the world size (2)" in check_world(cfg, "cl", 2)[0]


def test_the_probe_trains_the_phase_models_on_the_longest_batch(tmp_path, tiny_model, monkeypatch):
    """The GPU probe's own code, run on the CPU (no memory runs out here): dae's encoder and tied decoder."""
    cfg = _cfg(tmp_path, f"model.name_or_path={tiny_model}", "model.max_length=16")
    tried = []
    monkeypatch.setattr(batch_size, "search", lambda fits: max(m for m in (2, 4) if tried.append(m) or fits(m)))
    assert batch_size._largest_that_fits(PhaseContext(cfg, None, None, str(tiny_model)), "dae") == 4
    assert tried == [2, 4]
