"""A damaged checkpoint never traps a phase (resume.find): the file is named, the checkpoint set aside (never
deleted) and the phase resumes from the one before, or stops with exit 3 naming the file when none is left; and a
rank's own state is plain data, loaded with weights_only=True."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch
from test_loop_errors import linear_phase_run

from dcl_dist import checkpoints, loop, resume
from dcl_dist.errors import TrainingError
from dcl_dist.rundir import RunDir


@pytest.fixture
def trained(tmp_path):
    """Phase ft of a Linear layer, 10 steps with a checkpoint every 2 (the last two kept: steps 8 and 10)."""
    run, cfg = linear_phase_run(tmp_path, lambda n, loss: loss)
    loop.train(run, cfg, RunDir(tmp_path).phase("ft"))
    phase_dir = RunDir(tmp_path).phase("ft")
    assert [p.name for p in checkpoints.list_complete(phase_dir.checkpoints)] == ["step_00000008", "step_00000010"]
    torch.save(run.model_engine.module.weight.detach().clone(), tmp_path / "final_weights.pt")
    return phase_dir


def cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "truncated weights": lambda step: cut(step / "mp_rank_00_model_states.pt"),
    "emptied rank state": lambda step: (step / "rank0.pt").write_bytes(b""),
    "missing rank state": lambda step: (step / "rank0.pt").unlink(),
    "complete.json not JSON": lambda step: (step / "complete.json").write_text("{"),
    "complete.json a list": lambda step: (step / "complete.json").write_text("[]"),
    "complete.json with a wrong type": lambda step: (step / "complete.json").write_text(
        json.dumps({**json.loads((step / "complete.json").read_text()), "step": "ten"})
    ),
    "random bytes for weights": lambda step: (step / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 4),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_resumes(trained, damage, caplog):
    newest = trained.checkpoints / "step_00000010"
    DAMAGES[damage](newest)
    found = resume.find(trained, world_size=1)
    assert found.checkpoint == trained.checkpoints / "step_00000008" and found.saved["step"] == 8
    assert not newest.exists() and (trained.checkpoints / "damaged-step_00000010").is_dir()  # kept, not deleted
    assert "set aside as damaged-step_00000010: resuming from" in caplog.text and str(newest) in caplog.text


def test_with_none_left_the_phase_stops_with_exit_3_naming_the_file(trained):
    for step in ("step_00000008", "step_00000010"):
        (trained.checkpoints / step / "rank0.pt").write_bytes(b"")
    with pytest.raises(TrainingError) as e:
        resume.find(trained, world_size=1)
    assert e.value.exit_code == 3
    assert str(e.value).startswith(f"{trained.checkpoints / 'step_00000010' / 'rank0.pt'} is damaged: 0 bytes")
    assert f"or move {trained.checkpoints} away" in str(e.value)
    assert sorted(p.name for p in trained.checkpoints.iterdir()) == ["latest", "step_00000008", "step_00000010"]


def test_the_resumed_run_goes_on_from_the_earlier_checkpoint_exactly(trained, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (trained.checkpoints / "step_00000010" / "rank0.pt").unlink()
    run, cfg = linear_phase_run(tmp_path, lambda n, loss: loss)
    state = loop.train(run, cfg, trained, resume.find(trained, world_size=1))
    assert state.finished and state.step == 10
    assert "resuming from" in caplog.text and "RNG and data position restored exactly" in caplog.text
    final = torch.load(tmp_path / "final_weights.pt")
    assert torch.equal(run.model_engine.module.weight, final)  # steps 9 and 10 again, bit for bit


def test_a_damaged_best_checkpoint_stops_with_exit_3(tmp_path):
    phase_dir = RunDir(tmp_path).phase("ft")
    best = phase_dir.best / "step_00000004"
    best.mkdir(parents=True)
    (best / "complete.json").write_text(
        json.dumps(
            {
                "step": 4,
                "epoch": 0,
                "step_in_epoch": 4,
                "finished": False,
                "history": [],
                "files": {"0": {"mp_rank_00_model_states.pt": 9}},
            }
        )
    )
    with pytest.raises(TrainingError, match="mp_rank_00_model_states.pt is missing: the best weights of phase ft"):
        resume.find(phase_dir, world_size=1)


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_rank_state_that_is_not_plain_data_is_refused_and_never_run(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    newest = trained.checkpoints / "step_00000010"
    with open(newest / "rank0.pt", "wb") as f:
        pickle.dump({"rng": _Payload()}, f)  # what a tampered checkpoint could hold
    found = resume.find(trained, world_size=1)
    assert found.checkpoint.name == "step_00000008"
    assert not (tmp_path / "PWNED").exists()


def test_rank_states_hold_plain_data_only(trained):
    state = checkpoints.load_rank_state(trained.checkpoints / "step_00000010")
    assert torch.is_tensor(state["rng"]["numpy"][1]) and isinstance(state["rng"]["python"], tuple)
    loop.set_rng_state(state["rng"])  # and restores from it
