"""The tiny phase runs of the multi-process tests, as load_config overrides."""

from __future__ import annotations


def tiny_run(model_dir: str, train: str, run_dir: str, *extra: str) -> list[str]:
    """A run of the tiny model on `train`, short texts, no progress bar; `extra` adds the phase's own settings."""
    return [
        f"run.dir={run_dir}",
        f"model.name_or_path={model_dir}",
        f"data.train={train}",
        "model.max_length=24",
        "logging.progress_bar=false",
        *extra,
    ]
