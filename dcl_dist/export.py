"""dcl-dist export: a run's trained model as a peft adapter folder, a merged model, or a sentence-transformers folder.

A phase writes its artifact whole when it ends (every rank gathers its ZeRO-3 partitions, rank 0 writes), so an
export works from those folders in one process; like the artifact writer it refuses any tensor with a zero
dimension (what an adapter saved from ZeRO-3 placeholders looks like).
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from dcl_dist.config import VARIANTS
from dcl_dist.errors import ModelError
from dcl_dist.models.artifact import ADAPTER_DIR, is_complete, load_artifact, write_adapter_artifact, write_artifact
from dcl_dist.models.lora import read_adapter
from dcl_dist.rundir import RunDir

FORMS = ("adapter", "merged", "sentence-transformers")

log = logging.getLogger(__name__)


def phase_artifact(run_dir: RunDir, phase: str | None = None) -> Path:
    """The artifact of `phase`, or of the run's last finished phase."""
    config = run_dir.config_file
    if not config.is_file():
        raise ModelError(f"{run_dir.root}: no {config.name}, so this is not a run directory: give the run.dir of a run")
    phases = VARIANTS[yaml.safe_load(config.read_text())["run"]["variant"]]
    if phase is not None:
        if phase not in phases:
            raise ModelError(f"{run_dir.root}: --phase {phase} is not a phase of this run ({', '.join(phases)})")
        candidates = [phase]
    else:
        candidates = list(reversed(phases))
    for name in candidates:
        if is_complete(run_dir.phase(name).artifact):
            return run_dir.phase(name).artifact
    raise ModelError(
        f"{run_dir.root}: phase {candidates[0]} has no finished artifact: train it first (dcl-dist train ... --phase)"
    )


def export(run_dir: Path, form: str, out: Path | None = None, phase: str | None = None) -> Path:
    """Write the run's model (its last phase, or `phase`) in `form`; returns the folder written."""
    run = RunDir(run_dir)
    source = phase_artifact(run, phase)
    out = Path(out) if out is not None else run.export(form)
    art = load_artifact(source)
    meta = {**art.meta, "form": form, "exported_from": str(source)}
    max_length = art.meta["max_length"]
    if form == "adapter":
        if art.meta.get("lora") is None:
            raise ModelError(
                f"{source}: phase {art.meta['phase']} trained every backbone weight (lora.enabled false, or the phase"
                " not in lora.phases; or an earlier phase of the chain trained every weight): no adapter reproduces"
                " it; export --to merged instead"
            )
        adapter = read_adapter(source / ADAPTER_DIR)
        write_adapter_artifact(out, art.encoder, art.tokenizer, meta, max_length, art.head, adapter)
        log.info("adapter of rank %d on %s (phases %s)", adapter.config.r, adapter.base, art.meta["lora"]["phases"])
    elif form in ("merged", "sentence-transformers"):
        # one layout serves both: transformers opens the backbone, sentence-transformers the encoder, dcl-dist
        # predict the classifier; the backbone already holds the adapters merged in, so no adapter/ goes along
        write_artifact(out, art.encoder, art.tokenizer, {**meta, "lora": None}, max_length, art.head)
    else:
        raise ModelError(f"unknown export form {form}: use one of {', '.join(FORMS)}")
    return out
