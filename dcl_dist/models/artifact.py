"""Phase artifacts: plain Hugging Face folders that sentence-transformers opens as an encoder.

```
artifact/
  config.json, model.safetensors, tokenizer files   the backbone (transformers' save_pretrained)
  modules.json, sentence_bert_config.json          sentence-transformers: Transformer -> Pooling -> Dense...
  1_Pooling/config.json, 2_Dense/..., 3_Dense/...   (Dense: linear.weight / linear.bias, tanh)
  head/model.safetensors                            the classifier head (phase ft only)
  dcl_dist.json                                     phase, pooling, dense layers, labels, head, lineage
```
A folder appears under its final name only once complete (written beside it, then renamed).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from dcl_dist.models.encoder import SentenceEncoder, load_backbone
from dcl_dist.models.head import ClassifierHead

META_FILE = "dcl_dist.json"
FORMAT_VERSION = 1
TANH = "torch.nn.modules.activation.Tanh"


class ArtifactError(ValueError):
    """A model folder that is missing or incomplete."""


@dataclass
class Artifact:
    encoder: SentenceEncoder
    tokenizer: Any
    meta: dict
    head: ClassifierHead | None = None
    path: Path | None = field(default=None)

    @property
    def labels(self) -> list[str]:
        return self.meta.get("labels", [])


def _state_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def write_artifact(
    path: Path,
    encoder: SentenceEncoder,
    tokenizer: Any,
    meta: dict,
    max_length: int,
    head: ClassifierHead | None = None,
) -> None:
    """Write an artifact folder atomically (call on rank 0, inside engine.full_parameters under ZeRO-3)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    encoder.backbone.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    hidden = encoder.hidden_size
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling_dir = partial / "1_Pooling"
    pooling_dir.mkdir()
    (pooling_dir / "config.json").write_text(
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
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    for i, layer in enumerate(encoder.dense):
        sub = f"{i + 2}_Dense"
        (partial / sub).mkdir()
        config = {"in_features": hidden, "out_features": hidden, "bias": True, "activation_function": TANH}
        (partial / sub / "config.json").write_text(json.dumps(config, indent=2))
        save_file(_state_cpu(layer), str(partial / sub / "model.safetensors"))
        modules.append({"idx": i + 2, "name": str(i + 2), "path": sub, "type": "sentence_transformers.models.Dense"})
    (partial / "modules.json").write_text(json.dumps(modules, indent=2))
    (partial / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2)
    )
    full_meta = {
        **meta,
        "format": FORMAT_VERSION,
        "pooling": encoder.pooling,
        "dense_layers": len(encoder.dense),
        "max_length": max_length,
        "head": head.config if head is not None else None,
    }
    if head is not None:
        (partial / "head").mkdir()
        save_file(_state_cpu(head), str(partial / "head" / "model.safetensors"))
    (partial / META_FILE).write_text(json.dumps(full_meta, indent=2))
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial, path)


def read_meta(path: Path) -> dict:
    """An artifact's dcl_dist.json, or an ArtifactError that says what is missing."""
    path = Path(path)
    meta_file = path / META_FILE
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such model folder: give a run's artifact folder (e.g. runs/x/ft/artifact)")
    if not meta_file.is_file():
        raise ArtifactError(
            f"{path}: no {META_FILE}, so this is not a complete dcl_dist artifact"
            " (the phase that writes it did not finish): rerun the phase or point to another folder"
        )
    return json.loads(meta_file.read_text())


def is_complete(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def load_artifact(path: Path, attn_implementation: str = "sdpa") -> Artifact:
    """An artifact folder back as encoder (+ head), tokenizer and metadata, on the CPU."""
    path = Path(path)
    meta = read_meta(path)
    needed = ["config.json", "modules.json"] + [f"{i + 2}_Dense/model.safetensors" for i in range(meta["dense_layers"])]
    if meta.get("head") is not None:
        needed.append("head/model.safetensors")
    missing = [n for n in needed if not (path / n).is_file()]
    if not any(
        (path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    ):
        missing.append("model.safetensors")
    if missing:
        raise ArtifactError(
            f"{path}: missing {', '.join(missing)}: the folder is incomplete; copy it again or re-export"
        )
    encoder = SentenceEncoder(load_backbone(str(path), attn_implementation), meta["pooling"], meta["dense_layers"])
    for i, layer in enumerate(encoder.dense):
        layer.load_state_dict(load_file(str(path / f"{i + 2}_Dense" / "model.safetensors")))
    head = None
    if meta.get("head") is not None:
        head = ClassifierHead(**meta["head"])
        head.load_state_dict(load_file(str(path / "head" / "model.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return Artifact(encoder, tokenizer, meta, head, path)
