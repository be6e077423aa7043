"""The files of a model folder, checked before anything loads them: JSON that parses to the type its reader
expects, safetensors whose header fits the file, torch archives that are complete, a tokenizer that is there.

Pure Python (json, struct, zipfile): the pre-flight step runs these checks before torch or transformers are
imported, and each problem names the file and what to do. The loaders' own errors on a damaged file are a
traceback from deep inside transformers, safetensors or torch, or worse, a model that loads half.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

JSON_TYPES: dict[str, type] = {
    "config.json": dict,
    "tokenizer.json": dict,
    "tokenizer_config.json": dict,
    "special_tokens_map.json": dict,
    "added_tokens.json": dict,
    "adapter_config.json": dict,
    "dcl_dist.json": dict,
    "modules.json": list,
}
"""The JSON files of a model folder that transformers, peft or dcl_dist read, and the type each must hold."""

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
"""Any one of these gives a tokenizer (tokenizer.json, or the files a slow tokenizer is built from)."""


def json_problem(path: Path, expected: type = dict) -> str | None:
    """Why `path` is not a JSON file holding `expected` (dict or list), or None when it is."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        return f"{path} is missing"
    except UnicodeDecodeError as e:
        return f"{path} is damaged: bytes that are not UTF-8 at byte {e.start}"
    if not text.strip():
        return f"{path} is empty"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"{path} is damaged: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    if not isinstance(value, expected):
        want = "an object {...}" if expected is dict else "a list [...]"
        return f"{path} is damaged: it holds {type(value).__name__}, not {want}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (its header is read and held against the file's size)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is damaged: {size} bytes, too short for a safetensors file"
            (header_size,) = struct.unpack("<Q", head)
            if header_size > size - 8:
                return f"{path} is damaged: truncated (its header alone needs {header_size + 8} bytes, it has {size})"
            header = json.loads(f.read(header_size).decode("utf-8"))
    except FileNotFoundError:
        return f"{path} is missing"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{path} is damaged: its header is not valid JSON"
    if not isinstance(header, dict):
        return f"{path} is damaged: its header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return f"{path} is damaged: its header does not describe tensors"
    if 8 + header_size + end > size:
        return f"{path} is damaged: truncated ({size} bytes, its tensors need {8 + header_size + end})"
    return None


def torch_archive_problem(path: Path) -> str | None:
    """Why `path` is not a complete torch.save archive (a zip whose central directory, at its end, reads)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except FileNotFoundError:
        return f"{path} is missing"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        size = path.stat().st_size if path.exists() else 0
        return f"{path} is damaged: {'empty' if size == 0 else f'not a complete torch file ({e})'}"
    return None


def weights_problem(path: Path) -> str | None:
    """safetensors_problem or torch_archive_problem, by the file's ending."""
    if path.name.endswith(".safetensors"):
        return safetensors_problem(path)
    if path.name.endswith((".bin", ".pt")):
        return torch_archive_problem(path)
    return None


def model_folder_problems(folder: Path, tokenizer: bool = True) -> list[str]:
    """What keeps transformers from loading a model (and its tokenizer) from `folder`, each naming the file."""
    folder = Path(folder)
    problems = [
        problem
        for name, kind in JSON_TYPES.items()
        if (folder / name).is_file() and (problem := json_problem(folder / name, kind))
    ]
    if not (folder / "config.json").is_file():
        problems.append(f"{folder / 'config.json'} is missing")
    elif not any("config.json" in p for p in problems):
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        if not isinstance(model_type, str) or not model_type:
            problems.append(f"{folder / 'config.json'} is damaged: it has no model_type")
    problems += _weights_problems(folder)
    if tokenizer and not any((folder / name).is_file() for name in VOCABULARY_FILES):
        problems.append(f"{folder} has no tokenizer files (one of {', '.join(VOCABULARY_FILES)})")
    return problems


def _weights_problems(folder: Path) -> list[str]:
    """The weight files: one single file, or an index and every shard it names."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            problem = json_problem(index)
            if problem:
                return [problem]
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            if not isinstance(weight_map, dict):
                return [f"{index} is damaged: it has no weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
            return [problem for shard in shards if (problem := weights_problem(folder / shard))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            problem = weights_problem(folder / name)
            return [problem] if problem else []
    return [f"{folder} has no model weights (model.safetensors or pytorch_model.bin)"]


def max_positions(folder: Path) -> int | None:
    """The most tokens the model in `folder` reads (its position embeddings, less RoBERTa's reserved ones), or
    None when its config does not say."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        # RoBERTa-style models reserve the first positions (padding_idx + 1)
        return positions - (config.get("pad_token_id") or 0) - 1
    return positions
