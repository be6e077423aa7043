"""What identifies a phase's inputs (its data files and the base model), recorded with the phase and compared when
it resumes or is skipped: a file rewritten at the same path is named instead of resumed on "exactly".

A local file is identified by its size, modification time and a SHA-256 of its content: all of it up to
WHOLE_HASH_LIMIT, beyond that its first and last SAMPLE bytes (a corpus of many GB is not read again at every
start). A file whose size or hash changed has changed; a large file whose only change is its modification time
may be an unchanged copy, which the message says how to confirm. Hub names are identified by name (and, for a
model in the local cache, its revision). Changing data.test alone never refuses anything: test does not shape
training, and the note says how to re-evaluate.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path
from typing import Any

from dcl_dist.config import Config
from dcl_dist.data.sources import expand_paths, looks_like_path
from dcl_dist.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WHOLE_HASH_LIMIT = 64 << 20
"""Files up to this size are hashed whole (64 MiB: a fraction of a second)."""
SAMPLE = 1 << 20
"""Larger files: the hash of their first and last MiB."""
NOTE_ONLY = ("data.test",)
"""Inputs whose change is noted, never refused."""


def phase_inputs(cfg: Config, phase: str) -> dict[str, str | list[str]]:
    """The inputs that shape a phase's artifact, by config key (data.test too, for ft's note)."""
    d = cfg.data
    out: dict[str, str | list[str]] = {"model.name_or_path": cfg.model.name_or_path, "data.train": d.train}
    if d.validation:
        out["data.validation"] = d.validation
    if phase in ("dae", "joint") and d.unlabelled:
        out["data.unlabelled"] = list(d.unlabelled)
    if phase == "ft" and d.test:
        out["data.test"] = d.test
    return out


def identify(sources: dict[str, str | list[str]], model_key: str = "model.name_or_path") -> dict[str, Any]:
    """{config key: what identifies it now} for the sources of phase_inputs."""
    out: dict[str, Any] = {}
    for key, value in sources.items():
        if key == model_key:
            out[key] = _model(value)
        elif isinstance(value, list):
            out[key] = [_source(v) for v in value]
        else:
            out[key] = _source(value)
    return out


def _source(source: str) -> dict:
    if not looks_like_path(source):
        return {"source": source, "hub": source}  # a new revision under the same name is not noticed
    try:
        paths = expand_paths(source)
    except DataError:
        paths = []
    return {"source": source, "files": {str(p): file_identity(p) for p in paths}}


def _model(name: str) -> dict:
    folder = Path(name).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return {"source": name, "files": {str(p): file_identity(p) for p in files if p.name != "README.md"}}
    return {"source": name, "hub": name, "revision": _cached_revision(name)}


def _cached_revision(name: str) -> str | None:
    """The commit of a hub model's config.json in the local cache (offline, no download), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except (ImportError, ValueError, OSError):
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def file_identity(path: Path) -> dict:
    """size, mtime_ns and a SHA-256 of the whole file (or of its first and last SAMPLE bytes if larger)."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if stat.st_size <= WHOLE_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f.read(SAMPLE))
            f.seek(stat.st_size - SAMPLE)
            digest.update(f.read(SAMPLE))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def changes(saved: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(changes that refuse a resume, changes only noted), each naming the key, the file and what changed."""
    refused: list[str] = []
    noted: list[str] = []
    for key, before in saved.items():
        if key not in now:
            continue  # no longer an input of this config (e.g. data.validation removed: settings.json names it)
        befores = before if isinstance(before, list) else [before]
        nows = now[key] if isinstance(now[key], list) else [now[key]]
        found = [c for b, n in zip(befores, nows) for c in _source_changes(key, b, n)]
        if len(befores) != len(nows):
            found.append(f"{key}: {len(befores)} sources then, {len(nows)} now")
        (noted if key in NOTE_ONLY else refused).extend(found)
    return refused, noted


def _source_changes(key: str, before: dict, now: dict) -> list[str]:
    if before.get("source") != now.get("source"):
        return []  # another path: a settings change, which settings.json names
    if "hub" in before:
        revisions = before.get("revision"), now.get("revision")
        if None not in revisions and revisions[0] != revisions[1]:
            return [f"{key} {before['hub']}: revision {revisions[0]} then, {revisions[1]} now"]
        return []
    files_then, files_now = before.get("files", {}), now.get("files", {})
    out = [f"{key} {path}: no longer there" for path in files_then if path not in files_now]
    out += [f"{key} {path}: a file it did not have" for path in files_now if path not in files_then]
    for path in files_then.keys() & files_now.keys():
        change = _file_change(path, files_then[path], files_now[path])
        if change:
            out.append(f"{key} {change}")
    return sorted(out)


def _file_change(path: str, then: dict, now: dict) -> str | None:
    if then.get("size") == now.get("size") and then.get("sha256") == now.get("sha256"):
        if then.get("mtime_ns") == now.get("mtime_ns") or now["size"] <= WHOLE_HASH_LIMIT:
            return None  # hashed whole: the same content, whatever its time
        return (
            f"{path}: modified at {_time(now['mtime_ns'])}, after the phase read it ({_time(then['mtime_ns'])}); its"
            " size and its first and last MiB are the same. If it is an unchanged copy, give it its earlier time"
            f" back: touch -m -d @{then['mtime_ns'] / 1e9:.9f} {path}"
        )
    return (
        f"{path}: changed ({then['size']:,} bytes modified {_time(then['mtime_ns'])} then,"
        f" {now['size']:,} bytes modified {_time(now['mtime_ns'])} now)"
    )


def _time(mtime_ns: int) -> str:
    return datetime.datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def refusal(phase_root: Path, phase: str, refused: list[str]) -> ConfigError:
    """The error of a phase whose inputs changed since it was trained."""
    shown = "; ".join(refused[:4]) + (f" (and {len(refused) - 4} more)" if len(refused) > 4 else "")
    return ConfigError(
        [
            f"{phase_root} was trained on other inputs: {shown}. Resuming or reusing it would mix two data sets or"
            f" models: put the earlier files back, use a new run.dir, or delete {phase_root} (and the phases after"
            f" it) to train phase {phase} again on these"
        ]
    )
