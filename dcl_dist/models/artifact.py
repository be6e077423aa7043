"""Phase artifacts: plain Hugging Face folders that sentence-transformers opens as an encoder.

```
artifact/
  config.json, model.safetensors, tokenizer files   the backbone (transformers' save_pretrained)
  modules.json, sentence_bert_config.json,         sentence-transformers: Transformer -> Pooling -> Dense...
  config_sentence_transformers.json                 (cosine similarity)
  1_Pooling/config.json, 2_Dense/..., 3_Dense/...   (Dense: linear.weight / linear.bias, tanh)
  head/model.safetensors                            the classifier head (phase ft only)
  dcl_dist.json                                     phase, pooling, dense layers, class names, head, lineage,
                                                    data, config
  README.md                                         the model card (model_card.py), from dcl_dist.json
  adapter/                                          LoRA phases: a peft adapter folder (the backbone above is
                                                    that adapter merged into meta["lora"]["base"])
```
The adapter form (`dcl-dist export --to adapter`) has the peft adapter files at the top instead of the backbone.
A folder appears under its final name only once complete (written beside it, then renamed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from dcl_dist.errors import DclDistError, ModelError
from dcl_dist.model_card import write_card
from dcl_dist.models.encoder import SentenceEncoder, load_backbone
from dcl_dist.models.files import VOCABULARY_FILES, json_problem, model_folder_problems, weights_problem
from dcl_dist.models.head import ClassifierHead
from dcl_dist.models.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    Adapter,
    empty_tensors,
    has_adapter,
    load_adapter,
    merged_state_dict,
    read_adapter,
    write_adapter,
)

META_FILE = "dcl_dist.json"
ADAPTER_DIR = "adapter"
"""Subfolder of an artifact trained with LoRA: the adapter that gives its weights on meta["lora"]["base"]."""
FORMAT_VERSION = 1
TANH = "torch.nn.modules.activation.Tanh"


@dataclass
class Artifact:
    encoder: SentenceEncoder
    tokenizer: Any
    meta: dict
    head: ClassifierHead | None = None
    path: Path | None = field(default=None)

    @property
    def class_names(self) -> list[str]:
        """The classes the head predicts, in its output order (older artifacts stored them under "labels")."""
        return self.meta.get("class_names", self.meta.get("labels", []))


def _state_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


@contextlib.contextmanager
def _building(path: Path) -> Iterator[Path]:
    """A folder written beside `path` that takes its name only once complete."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    yield partial
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial, path)


def _refuse_empty(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    empty = empty_tensors(tensors)
    if empty:
        raise ModelError(
            f"{path}: refusing to write {len(empty)} tensors with a zero dimension ({', '.join(empty[:3])}):"
            " these are ZeRO-3 partitions that were not gathered; write inside engine.full_parameters"
        )


def write_artifact(
    path: Path,
    encoder: SentenceEncoder,
    tokenizer: Any,
    meta: dict,
    max_length: int,
    head: ClassifierHead | None = None,
    adapter: Adapter | None = None,
    shown_path: Path | None = None,
) -> None:
    """Write an artifact folder atomically (call on rank 0, inside engine.full_parameters under ZeRO-3).

    A LoRA backbone is saved with its adapter merged in, so the folder stays a plain model; `adapter` (the
    adapter that gives these weights on adapter.base) goes to adapter/ beside it. The model card's snippets load
    it from shown_path (where the folder will live when a caller builds it elsewhere first), else from path.
    """
    backbone = encoder.backbone
    state = merged_state_dict(backbone) if has_adapter(backbone) else backbone.state_dict()
    parts = _parts(encoder, head)
    _refuse_empty(path, {**state, **_flat(parts)})
    if adapter is not None:
        _refuse_empty(path / ADAPTER_DIR, adapter.weights)
    with _building(path) as partial:
        backbone.save_pretrained(partial, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
        modules += _write_parts(partial, encoder, parts, meta, max_length, head)
        (partial / "modules.json").write_text(json.dumps(modules, indent=2))
        (partial / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2)
        )
        # the method trains cosine similarity (phase cl), so that is the similarity of its embeddings
        (partial / "config_sentence_transformers.json").write_text(
            json.dumps({"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None}, indent=2)
        )
        if adapter is not None:
            write_adapter(partial / ADAPTER_DIR, adapter)
        write_card(partial, shown_path or path, read_meta(partial))


def write_adapter_artifact(
    path: Path,
    encoder: SentenceEncoder,
    tokenizer: Any,
    meta: dict,
    max_length: int,
    head: ClassifierHead | None,
    adapter: Adapter,
    shown_path: Path | None = None,
) -> None:
    """The adapter form: a standard peft adapter folder (on adapter.base), plus pooling, dense layers and head;
    shown_path as in write_artifact."""
    parts = _parts(encoder, head)
    _refuse_empty(path, {**adapter.weights, **_flat(parts)})
    with _building(path) as partial:
        write_adapter(partial, adapter)
        tokenizer.save_pretrained(partial)
        _write_parts(partial, encoder, parts, meta, max_length, head)
        write_card(partial, shown_path or path, read_meta(partial))


def _parts(encoder: SentenceEncoder, head: ClassifierHead | None) -> dict[str, dict[str, torch.Tensor]]:
    """The weights beside the backbone, by the file they go to: each Dense layer, the head."""
    parts = {f"{i + 2}_Dense": _state_cpu(layer) for i, layer in enumerate(encoder.dense)}
    if head is not None:
        parts["head"] = _state_cpu(head)
    return parts


def _flat(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{part}/{name}": t for part, state in parts.items() for name, t in state.items()}


def _write_parts(
    folder: Path, encoder: SentenceEncoder, parts: dict, meta: dict, max_length: int, head: ClassifierHead | None
) -> list[dict]:
    """Pooling, dense layers, head and dcl_dist.json; returns the sentence-transformers modules after the backbone."""
    hidden = encoder.hidden_size
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": encoder.pooling == "cls",
                "pooling_mode_mean_tokens": encoder.pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            indent=2,
        )
    )
    modules = [{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    for name, state in parts.items():
        (folder / name).mkdir()
        save_file(state, str(folder / name / "model.safetensors"))
        if name.endswith("_Dense"):
            config = {"in_features": hidden, "out_features": hidden, "bias": True, "activation_function": TANH}
            (folder / name / "config.json").write_text(json.dumps(config, indent=2))
            idx = int(name.split("_")[0])
            modules.append({"idx": idx, "name": str(idx), "path": name, "type": "sentence_transformers.models.Dense"})
    full_meta = {
        **meta,
        "format": FORMAT_VERSION,
        "pooling": encoder.pooling,
        "dense_layers": len(encoder.dense),
        "max_length": max_length,
        "head": head.config if head is not None else None,
    }
    (folder / META_FILE).write_text(json.dumps(full_meta, indent=2))
    return modules


DAMAGED_FIX = (
    "copy the folder again, or export it again (dcl-dist export); a run's own artifact: delete that folder and run"
    " the same train command (the phase writes it again from its last checkpoint)"
)
"""What to do about an artifact folder with a damaged or missing file."""


def read_meta(path: Path) -> dict:
    """An artifact's dcl_dist.json, or a ModelError that says what is missing or damaged."""
    path = Path(path)
    meta_file = path / META_FILE
    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder: give a run's artifact folder (e.g. runs/x/ft/artifact)")
    if not meta_file.is_file():
        raise ModelError(
            f"{path}: no {META_FILE}, so this is not a complete dcl_dist artifact"
            " (the phase that writes it did not finish): rerun the phase or point to another folder"
        )
    problem = json_problem(meta_file) or _meta_problem(meta_file, json.loads(meta_file.read_text(encoding="utf-8")))
    if problem:
        raise ModelError(f"{problem}: {DAMAGED_FIX}")
    return json.loads(meta_file.read_text(encoding="utf-8"))


def _meta_problem(meta_file: Path, meta: dict) -> str | None:
    """Why an artifact's dcl_dist.json cannot describe its model (a field missing or of the wrong type)."""
    fields = {"pooling": str, "dense_layers": int, "max_length": int}
    for key, kind in fields.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"{meta_file} is damaged: '{key}' is {meta.get(key)!r}, not {kind.__name__}"
    head = meta.get("head")
    if head is not None:
        names = meta.get("class_names", meta.get("labels"))
        if not isinstance(head, dict) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return f"{meta_file} is damaged: its head or class_names are not what dcl_dist writes"
    return None


def is_complete(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def artifact_problems(path: Path, meta: dict) -> list[str]:
    """The files load_artifact reads, checked before anything loads them (models/files.py), each naming the file."""
    adapter_form = (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()
    if adapter_form:
        problems = [json_problem(path / ADAPTER_CONFIG), weights_problem(path / ADAPTER_WEIGHTS)]
        if not any((path / name).is_file() for name in VOCABULARY_FILES):
            problems.append(f"{path} has no tokenizer files (one of {', '.join(VOCABULARY_FILES)})")
    else:
        problems = model_folder_problems(path)
    parts = [f"{i + 2}_Dense" for i in range(meta["dense_layers"])] + (["head"] if meta.get("head") is not None else [])
    problems += [weights_problem(path / part / "model.safetensors") for part in parts]
    return [p for p in problems if p]


def load_artifact(path: Path, attn_implementation: str = "sdpa", backbone: torch.nn.Module | None = None) -> Artifact:
    """An artifact folder (or an exported adapter folder) back as encoder (+ head), tokenizer and metadata, on the CPU.

    backbone: use this one instead of the folder's (a phase that carries an adapter on starts from its base).
    Every file it reads is checked first (artifact_problems): a damaged one is a ModelError that names it.
    """
    path = Path(path)
    meta = read_meta(path)
    problems = artifact_problems(path, meta)
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise ModelError(f"{shown}: the folder is incomplete or damaged: {DAMAGED_FIX}")
    adapter_form = (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()
    with _loading(path, "the model"):
        if backbone is None:
            backbone = (
                _adapted_backbone(path, attn_implementation)
                if adapter_form
                else load_backbone(str(path), attn_implementation)
            )
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    encoder = SentenceEncoder(backbone, meta["pooling"], meta["dense_layers"])
    head = None
    with _loading(path, "the dense layers and head"):
        for i, layer in enumerate(encoder.dense):
            layer.load_state_dict(load_file(str(path / f"{i + 2}_Dense" / "model.safetensors")))
        if meta.get("head") is not None:
            head = ClassifierHead(**meta["head"])
            head.load_state_dict(load_file(str(path / "head" / "model.safetensors")))
    return Artifact(encoder, tokenizer, meta, head, path)


@contextlib.contextmanager
def _loading(path: Path, what: str) -> Iterator[None]:
    """A loader's error on files that passed the checks (a config.json that fits no model, weights of another
    shape, a tokenizer.json that is JSON but not a tokenizer) as one ModelError naming the folder."""
    try:
        yield
    except DclDistError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise ModelError(f"{path}: {what} cannot be loaded from it ({_first_line(e)}): {DAMAGED_FIX}") from None
    except Exception as e:
        if type(e) is not Exception:  # the tokenizers library raises bare Exception for a file it cannot parse
            raise
        raise ModelError(f"{path}: {what} cannot be loaded from it ({_first_line(e)}): {DAMAGED_FIX}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _adapted_backbone(path: Path, attn_implementation: str) -> torch.nn.Module:
    """The base model named in an adapter folder, with that adapter (not merged)."""
    adapter = read_adapter(path)
    base = Path(adapter.base).expanduser()
    problems = model_folder_problems(base, tokenizer=False) if base.is_dir() else []
    if problems:
        raise ModelError(
            f"{path}: the adapter's base model is damaged ({'; '.join(problems[:2])}): restore it, or point"
            f" base_model_name_or_path in {path / ADAPTER_CONFIG} to a good copy of it"
        )
    try:
        backbone = load_backbone(adapter.base, attn_implementation)
    except OSError as e:
        raise ModelError(
            f"{path}: the adapter's base model {adapter.base} cannot be loaded ({e}): make it available there, or"
            f" point base_model_name_or_path in {path / ADAPTER_CONFIG} to a copy of it"
        ) from None
    load_adapter(backbone, adapter, trainable=False)
    return backbone
