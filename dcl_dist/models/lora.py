"""LoRA on the encoder's backbone (peft): adapters injected in place, merged weights, standard adapter folders.

The backbone stays its own Hugging Face class (peft's inject_adapter_in_model swaps each target Linear for a
lora.Linear in place), so pooling, the tied decoder and save_pretrained keep working on it. An adapter folder
is what PeftModel.save_pretrained writes: adapter_config.json (with base_model_name_or_path) and
adapter_model.safetensors, so PeftModel.from_pretrained(AutoModel.from_pretrained(base), folder) opens it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from dcl_dist.config.schema import LoraConfig
from dcl_dist.errors import ConfigError, ModelError
from dcl_dist.models.files import json_problem, weights_problem

ADAPTER_NAME = "default"
"""peft's name for the one adapter a backbone carries."""

PEFT_PREFIX = "base_model.model."
"""Key prefix of PeftModel.save_pretrained's adapter_model.safetensors."""

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

AUTO_TARGET_MODULES: dict[str, list[str]] = {
    **{
        t: ["query", "value"]
        for t in (
            "bert",  # also MiniLM and most sentence-transformers models
            "roberta",
            "xlm-roberta",
            "xlm-roberta-xl",
            "camembert",
            "electra",
            "ernie",
            "data2vec-text",
            "roberta-prelayernorm",
            "xmod",
            "megatron-bert",
            "albert",
        )
    },
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "modernbert": ["Wqkv"],
}
"""lora.target_modules: auto, per model_type: the attention query and value projections (LoRA paper, sec. 7.1)."""

UNTOUCHED_CHILDREN = ("pooler",)
"""Backbone parts that never get an adapter: BERT's pooler feeds neither pooling mode (it stays frozen)."""


def linear_names(backbone: nn.Module, untouched: bool = False) -> list[str]:
    """Paths of the Linear layers an adapter may target (untouched: those in the parts that never get one)."""
    return [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear) and (name.split(".")[0] in UNTOUCHED_CHILDREN) == untouched
    ]


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of target names: the whole path, or its dotted suffix
    return name == target or name.endswith("." + target)


def resolve_targets(model_type: str, configured: str | list[str]) -> list[str]:
    """The target module names for a model type: the configured list, or auto's per-type default."""
    if configured != "auto":
        return list(configured)
    if model_type not in AUTO_TARGET_MODULES:
        raise ConfigError(
            [f"'lora.target_modules' is auto, and there is no automatic choice for model type '{model_type}'"]
        )
    return AUTO_TARGET_MODULES[model_type]


def target_problems(name_or_path: str, configured: str | list[str]) -> list[str]:
    """Why lora.target_modules does not fit the base model (empty when it does, or when its config is unreadable)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError):
        return []  # not reachable now: loading the model reports it
    return config_target_problems(config, configured, name_or_path)


def config_target_problems(config: Any, configured: str | list[str], name: str) -> list[str]:
    """target_problems for a model config: its module tree is built on the meta device (no weights)."""
    from transformers import AutoModel

    with torch.device("meta"):
        backbone = AutoModel.from_config(config)
    names = linear_names(backbone)
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    if configured == "auto" and config.model_type not in AUTO_TARGET_MODULES:
        return [
            f"is auto, and there is no automatic choice for model type '{config.model_type}':"
            f" list the Linear layers to adapt; this model has {', '.join(short)}"
        ]
    unknown = [t for t in resolve_targets(config.model_type, configured) if not any(_matches(n, t) for n in names)]
    if unknown:
        return [
            f"names {', '.join(unknown)}, which match no Linear layer of {name}"
            f" ({config.model_type}): use some of {', '.join(short)}"
        ]
    return []


def peft_config(cfg: LoraConfig, backbone: nn.Module) -> peft.LoraConfig:
    """The peft LoraConfig of our lora section for this backbone."""
    untouched = linear_names(backbone, untouched=True)
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=resolve_targets(backbone.config.model_type, cfg.target_modules),
        exclude_modules=untouched or None,
        bias="none",
    )


def add_adapter(backbone: nn.Module, cfg: LoraConfig) -> None:
    """Give the backbone a fresh adapter (B = 0: the backbone computes what it did) and freeze every other weight."""
    peft.inject_adapter_in_model(peft_config(cfg, backbone), backbone, adapter_name=ADAPTER_NAME)


def has_adapter(module: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in module.modules())


def adapter_layers(module: nn.Module) -> dict[str, LoraLayer]:
    """The LoRA-wrapped layers of a module, by path."""
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


@dataclass
class Adapter:
    """A LoRA adapter apart from its model: peft's config (base_model_name_or_path: the backbone it applies to)
    and its weights under peft's state-dict keys (`<path>.lora_A.weight`, `<path>.lora_B.weight`)."""

    config: peft.LoraConfig
    weights: dict[str, torch.Tensor]

    @property
    def base(self) -> str:
        return self.config.base_model_name_or_path

    @property
    def scaling(self) -> float:
        return self.config.lora_alpha / self.config.r


def trained_adapter(backbone: nn.Module, base: str) -> Adapter:
    """The backbone's adapter as CPU copies (under ZeRO-3: inside engine.full_parameters, or it is empty)."""
    config = copy.deepcopy(backbone.peft_config[ADAPTER_NAME])
    config.base_model_name_or_path = base
    config.inference_mode = True
    weights = peft.get_peft_model_state_dict(backbone, adapter_name=ADAPTER_NAME)
    return Adapter(config, {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()})


def load_adapter(backbone: nn.Module, adapter: Adapter, trainable: bool) -> None:
    """Inject `adapter` into the backbone with its trained values (trainable: to train it further)."""
    config = copy.deepcopy(adapter.config)
    config.inference_mode = not trainable
    peft.inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    result = peft.set_peft_model_state_dict(backbone, adapter.weights, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise ModelError(
            f"the adapter on {adapter.base} does not fit the backbone it is loaded onto: unexpected"
            f" {result.unexpected_keys[:3]}, missing {missing[:3]}: start the phase from the artifact the adapter"
            " came with"
        )
    if not trainable:
        backbone.requires_grad_(False)


def merged_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict under its plain names, each adapter merged in: W + (alpha / r) B A.

    Computed apart from the model (the module stays unmerged), so it works on ZeRO-3's gathered parameters.
    """
    state = {
        key.replace(".base_layer.", "."): value for key, value in backbone.state_dict().items() if ".lora_" not in key
    }
    for name, layer in adapter_layers(backbone).items():
        key = f"{name}.weight"
        delta = layer.get_delta_weight(ADAPTER_NAME)
        state[key] = (state[key].float() + delta.float()).to(state[key].dtype)
    return state


def compose(first: Adapter, second: Adapter) -> Adapter:
    """One adapter equal to applying `first`, merging it, then `second`: rank r1 + r2 on first's base.

    Merging is additive (W + s1 B1 A1 + s2 B2 A2), so stacking A1 over A2 and [s1 B1, s2 B2] side by side, with
    scaling 1 (alpha = r), gives the same update exactly: how a merge-between-phases chain ships as one adapter.
    """
    keys = sorted(k[: -len(".lora_A.weight")] for k in first.weights if k.endswith(".lora_A.weight"))
    second_keys = sorted(k[: -len(".lora_A.weight")] for k in second.weights if k.endswith(".lora_A.weight"))
    if keys != second_keys or len(first.weights) != 2 * len(keys) or len(second.weights) != 2 * len(keys):
        raise ModelError(
            "the adapters of two phases target different layers, so they cannot be composed into one: give both"
            " phases the same lora.target_modules"
        )
    weights = {}
    for key in keys:
        weights[f"{key}.lora_A.weight"] = torch.cat(
            [first.weights[f"{key}.lora_A.weight"], second.weights[f"{key}.lora_A.weight"]], dim=0
        )
        weights[f"{key}.lora_B.weight"] = torch.cat(
            [
                first.weights[f"{key}.lora_B.weight"] * first.scaling,
                second.weights[f"{key}.lora_B.weight"] * second.scaling,
            ],
            dim=1,
        )
    rank = first.config.r + second.config.r
    config = copy.deepcopy(first.config)
    config.r, config.lora_alpha = rank, rank
    return Adapter(config, weights)


def empty_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors with a zero dimension: what a ZeRO-3 partition placeholder looks like outside a gather."""
    return [f"{k} {tuple(v.shape)}" for k, v in tensors.items() if 0 in v.shape]


def write_adapter(folder: Path, adapter: Adapter) -> None:
    """A standard peft adapter folder (what PeftModel.save_pretrained writes); the caller checks for empty tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    adapter.config.save_pretrained(str(folder))
    save_file(
        {PEFT_PREFIX + k: v.contiguous() for k, v in adapter.weights.items()},
        str(folder / ADAPTER_WEIGHTS),
        metadata={"format": "pt"},
    )


def read_adapter(folder: Path) -> Adapter:
    """An adapter folder (ours or any peft LoRA folder) back as config and weights; a damaged or missing file is a
    ModelError that names it."""
    problem = json_problem(Path(folder) / ADAPTER_CONFIG) or weights_problem(Path(folder) / ADAPTER_WEIGHTS)
    problem = problem or _adapter_config_problem(Path(folder) / ADAPTER_CONFIG)
    if problem:
        raise ModelError(f"{problem}: the adapter folder is incomplete or damaged: copy it again or export it again")
    config = peft.LoraConfig.from_pretrained(str(folder))
    weights = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    return Adapter(config, {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()})


def _adapter_config_problem(file: Path) -> str | None:
    """Why adapter_config.json (a JSON object) is not a LoRA adapter's config that peft reads as it should: peft
    takes a wrong type as it comes (r "big") and fails later, or with a bare KeyError."""
    config = json.loads(file.read_text(encoding="utf-8"))
    checks = {
        "peft_type": lambda v: v == "LORA",
        "r": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "lora_alpha": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "base_model_name_or_path": lambda v: isinstance(v, str) and v != "",
        "target_modules": lambda v: v is None or isinstance(v, str) or isinstance(v, list),
    }
    for key, fits in checks.items():
        if key in config or key in ("peft_type", "base_model_name_or_path"):
            if not fits(config.get(key)):
                return f"{file} is damaged: '{key}' is {config.get(key)!r}, which no LoRA adapter has"
    return None


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: Path) -> str:
    """base_model_name_or_path of an adapter folder."""
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
