"""dcl-dist export: a run's trained model as a peft adapter folder, a merged model, or a sentence-transformers folder.

A phase writes its artifact whole when it ends (every rank gathers its ZeRO-3 partitions, rank 0 writes), so an
export works from those folders in one process; like the artifact writer it refuses any tensor with a zero
dimension (what an adapter saved from ZeRO-3 placeholders looks like).

The export is written into a new folder beside --out and takes its place only once complete (atomic.py). It
replaces an earlier export of the same form; any other folder that is not empty only with --overwrite; never the
run directory, a folder that holds it, the current or home directory, or anything in the run but its export/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from dcl_dist.atomic import replacing_folder
from dcl_dist.config import VARIANTS
from dcl_dist.errors import DclDistError, ModelError
from dcl_dist.models.artifact import (
    ADAPTER_DIR,
    META_FILE,
    is_complete,
    load_artifact,
    write_adapter_artifact,
    write_artifact,
)
from dcl_dist.models.lora import read_adapter
from dcl_dist.rundir import RunDir

FORMS = ("adapter", "merged", "sentence-transformers")

log = logging.getLogger(__name__)


def phase_artifact(run_dir: RunDir, phase: str | None = None) -> Path:
    """The artifact of `phase`, or of the run's last finished phase."""
    config = run_dir.config_file
    if not config.is_file():
        raise ModelError(f"{run_dir.root}: no {config.name}, so this is not a run directory: give the run.dir of a run")
    phases = _run_phases(config)
    if phase is not None:
        if phase not in phases:
            raise ModelError(f"{run_dir.root}: --phase {phase} is not a phase of this run ({', '.join(phases)})")
        candidates = [phase]
    else:
        candidates = list(reversed(phases))
    for name in candidates:
        if is_complete(run_dir.phase(name).artifact):
            return run_dir.phase(name).artifact
    artifact = run_dir.phase(candidates[0]).artifact
    raise ModelError(
        f"{run_dir.root}: phase {candidates[0]} has no finished artifact ({artifact} has no {META_FILE}): train it"
        " first (dcl-dist train ... --phase), or run the same train command to write it from its last checkpoint"
    )


def _run_phases(config: Path) -> tuple[str, ...]:
    """The phases of the run whose resolved config is `config` (its run.variant)."""
    try:
        variant = yaml.safe_load(config.read_text(encoding="utf-8"))["run"]["variant"]
        return VARIANTS[variant]
    except (yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise ModelError(
            f"{config} is damaged ({type(e).__name__}: no run.variant can be read from it): restore it from the"
            " config the run was started with (dcl-dist train writes it there)"
        ) from None


def check_target(out: Path, run: RunDir, form: str, overwrite: bool) -> None:
    """Refuse an --out that would destroy what is not an earlier export of this form (DclDistError, exit 2)."""
    target, root = out.resolve(), run.root.resolve()
    protected = {"the run directory": root, "the current directory": Path.cwd().resolve(), "your home": Path.home()}
    for what, folder in protected.items():
        if target == folder or target in folder.parents:
            raise DclDistError(f"--out {out} is {what} or a folder that holds it: export to a folder of its own")
    exports = run.export(form).parent.resolve()
    if root in target.parents and target != exports and exports not in target.parents:
        raise DclDistError(f"--out {out} is inside the run directory {run.root}: export there only under {exports}")
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir():
        raise DclDistError(f"--out {out} is a file: choose a folder, or add --overwrite to replace the file")
    if any(target.iterdir()) and not is_export(target, form):
        raise DclDistError(
            f"--out {out} is not empty and is not an earlier --to {form} export (no {META_FILE} with form {form}):"
            " choose a new or empty folder, or add --overwrite to replace what it holds"
        )


def is_export(folder: Path, form: str) -> bool:
    """Whether `folder` holds an earlier export of `form` (its dcl_dist.json says so)."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("form") == form


def export(
    run_dir: Path, form: str, out: Path | None = None, phase: str | None = None, overwrite: bool = False
) -> Path:
    """Write the run's model (its last phase, or `phase`) in `form`; returns the folder written."""
    if form not in FORMS:
        raise ModelError(f"unknown export form {form}: use one of {', '.join(FORMS)}")
    run = RunDir(run_dir)
    source = phase_artifact(run, phase)
    out = Path(out) if out is not None else run.export(form)
    check_target(out, run, form, overwrite)
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
        with replacing_folder(out) as folder:
            write_adapter_artifact(folder, art.encoder, art.tokenizer, meta, max_length, art.head, adapter, out)
        log.info("adapter of rank %d on %s (phases %s)", adapter.config.r, adapter.base, art.meta["lora"]["phases"])
    else:
        # one layout serves both merged and sentence-transformers: transformers opens the backbone,
        # sentence-transformers the encoder, dcl-dist predict the classifier; the backbone already holds the
        # adapters merged in, so no adapter/ goes along
        with replacing_folder(out) as folder:
            meta = {**meta, "lora": None}
            write_artifact(folder, art.encoder, art.tokenizer, meta, max_length, art.head, shown_path=out)
    return out
