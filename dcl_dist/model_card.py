"""The README.md of every artifact and export: a Hugging Face model card, written from the folder's dcl_dist.json.

YAML front matter (huggingface_hub's ModelCardData: base_model, library_name, pipeline_tag, tags, metrics and the
model-index of the test results), then the method and the phases with their settings, the data (sources, sizes,
class counts before and after the imbalance correction), the results with their n, the LoRA lineage, and a usage
snippet for each way the folder loads (tests/integration/test_model_card.py runs every snippet).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCardData

CARD_FILE = "README.md"
PAPER = (
    "*Combining Denoising Autoencoders with Contrastive Learning to fine-tune Transformer Models* (Lopez-Avila and"
    " Suarez-Paniagua, EMNLP 2023)"
)
OBJECTIVES = {
    "dae": "TSDAE denoising autoencoder: the encoder learns the domain's text (no labels)",
    "cl": "contrastive learning on the imbalance-corrected train set: the representation clusters by class",
    "joint": "denoising and contrastive losses at once, one optimiser",
    "ft": "classifier: encoder + two-layer MLP head, early stopping on validation",
}
KEY_SETTINGS = {
    "dae": ["deletion_ratio", "tie_decoder"],
    "cl": ["mode", "loss", "imbalance", "batching"],
    "joint": ["dae_weight", "cl_weight"],
    "ft": ["select_metric", "patience", "head_hidden", "activation", "freeze_encoder"],
}
"""Besides epochs, max_steps, lr and batch sizes: the settings each phase's row of the card shows."""
EXAMPLE_TEXTS = ["first text to embed or classify", "a second, different text"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def write_card(folder: Path, shown_path: Path, meta: dict) -> Path:
    """Write folder/README.md for the artifact whose dcl_dist.json is `meta`; snippets load it from shown_path."""
    out = Path(folder) / CARD_FILE
    out.write_text(card(meta, str(shown_path)), encoding="utf-8")
    return out


def card(meta: dict, path: str) -> str:
    """The model card's text."""
    sections = [
        _title(meta),
        _method(meta),
        _data(meta),
        _results(meta),
        _lineage(meta),
        _usage(meta, path),
    ]
    return f"---\n{card_data(meta).to_yaml()}\n---\n\n" + "\n\n".join(s.strip() for s in sections if s) + "\n"


def form_of(meta: dict) -> str:
    """artifact (a run's phase folder), adapter, merged or sentence-transformers (dcl-dist export)."""
    return meta.get("form", "artifact")


def has_backbone(meta: dict) -> bool:
    """Whether the folder holds the full backbone (every form but the adapter one)."""
    return form_of(meta) != "adapter"


def adapter_folder(meta: dict, path: str) -> str | None:
    """Where a peft adapter of this folder lives: the folder itself (adapter form), adapter/ (LoRA artifact)."""
    if form_of(meta) == "adapter":
        return path
    if form_of(meta) == "artifact" and meta.get("lora"):
        return f"{path}/adapter"
    return None


def base_model_id(meta: dict) -> str | None:
    """The base model's hub id: the configured name when it is one, else what the local folder's own card says."""
    name = meta.get("base_model") or ""
    folder = Path(name)
    if HUB_ID.match(name) and not folder.exists():
        return name
    readme = folder / CARD_FILE
    if readme.is_file():
        front = readme.read_text(encoding="utf-8", errors="replace").split("---")
        if len(front) >= 3:
            try:
                found = (yaml.safe_load(front[1]) or {}).get("base_model")
            except yaml.YAMLError:
                found = None
            if isinstance(found, str) and HUB_ID.match(found):
                return found
    return None


def card_data(meta: dict) -> ModelCardData:
    classifier = meta.get("head") is not None
    test = meta.get("metrics", {}).get("test")
    tags = ["dcl-dist", "sentence-transformers", "text-classification" if classifier else "feature-extraction"]
    tags += [f"phase-{meta.get('phase')}", f"variant-{meta.get('variant')}"] + (["lora"] if meta.get("lora") else [])
    results = []
    if test:
        source = (meta.get("data") or {}).get("test") or "test"
        for metric, name in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1")):
            results.append(
                EvalResult(
                    task_type="text-classification",
                    dataset_type=source,
                    dataset_name=Path(source).name,
                    dataset_split="test",
                    metric_type="accuracy" if metric == "accuracy" else "f1",
                    metric_value=round(float(test[metric]), 4),
                    metric_name=name,
                    metric_config="macro" if metric == "macro_f1" else None,
                )
            )
    return ModelCardData(
        base_model=base_model_id(meta),
        library_name="peft" if form_of(meta) == "adapter" else "sentence-transformers",
        pipeline_tag="text-classification" if classifier else "sentence-similarity",
        tags=tags,
        metrics=["accuracy", "f1"] if classifier else None,
        model_name=f"dcl-dist {meta.get('variant')} {meta.get('phase')}" if results else None,
        eval_results=results or None,
    )


def _title(meta: dict) -> str:
    classes = meta.get("class_names", [])
    what = f"a text classifier of {len(classes)} classes" if meta.get("head") else "a sentence encoder"
    lines = [
        f"# dcl-dist {meta.get('variant')}: phase {meta.get('phase')} ({form_of(meta)})",
        "",
        f"This folder is {what}, trained by dcl-dist with the method of {PAPER}: the output of phase"
        f" `{meta.get('phase')}` of variant `{meta.get('variant')}`.",
    ]
    if classes:
        lines += ["", "Classes: " + ", ".join(f"`{c}`" for c in classes) + "."]
    if meta.get("exported_from"):
        lines += ["", f"Exported from `{meta['exported_from']}`."]
    return "\n".join(lines)


def _method(meta: dict) -> str:
    config = meta.get("config") or {}
    phases = [entry["phase"] for entry in meta.get("lineage", [])] or [meta.get("phase")]
    rows = ["| phase | objective | settings |", "| --- | --- | --- |"]
    for phase in phases:
        section = config.get(phase, {})
        keys = ["epochs", "max_steps", "lr", "micro_batch_size_per_rank", "global_batch_size"] + KEY_SETTINGS[phase]
        shown = ", ".join(f"{k} {section[k]}" for k in keys if k in section and section[k] is not None)
        rows.append(f"| {phase} | {OBJECTIVES[phase]} | {shown} |")
    dense = meta.get("dense_layers", 0)
    encoder = f"base model `{meta.get('base_model')}`, {meta.get('pooling')} pooling, {dense} Dense(tanh) layer(s)"
    head = meta.get("head")
    if head:
        encoder += (
            f"; head: {head['hidden']} -> {head['head_hidden']} ({head['activation']}) -> {head['n_classes']} classes"
        )
    lines = [
        "## Method",
        "",
        " -> ".join(phases) + f" (each phase starts from the previous one's output). Encoder: {encoder};"
        f" texts cut at {meta.get('max_length')} tokens; seed {config.get('run', {}).get('seed')}.",
        "",
        *rows,
    ]
    if config:
        shown_config = {k: config[k] for k in ("model", *phases, "lora") if k in config}
        lines += [
            "",
            "<details><summary>The settings in full (dcl-dist config keys)</summary>",
            "",
            "```yaml",
            yaml.safe_dump(shown_config, sort_keys=False).strip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines)


def _data(meta: dict) -> str:
    data = meta.get("data")
    if not data:
        return ""
    sizes = data.get("sizes", {})
    validation = f"`{data['validation']}`" if data.get("validation") else "a stratified hold-out of train"
    lines = [
        "## Data",
        "",
        "| split | source | examples |",
        "| --- | --- | --- |",
        f"| train | `{data.get('train')}` | {sizes.get('train')} |",
        f"| validation | {validation} | {sizes.get('validation')} |",
    ]
    if data.get("test"):
        lines.append(f"| test | `{data['test']}` | {sizes.get('test')} |")
    counts = data.get("class_counts", {})
    correction = data.get("imbalance_correction")
    if counts and correction:
        lines += ["", "Training examples per class, before and after the imbalance correction of phase cl:", ""]
        lines += ["| class | train | after correction | ratio |", "| --- | --- | --- | --- |"]
        for i, (name, n) in enumerate(counts.items()):
            lines.append(f"| {name} | {n} | {correction['corrected_counts'][i]} | {correction['ratios'][i]:.2f} |")
        bounds = f"min_ratio {correction.get('min_ratio')}, max_ratio {correction.get('max_ratio')}"
        lines += ["", f"Imbalance correction `{correction.get('imbalance')}` ({bounds})."]
    elif counts:
        lines += ["", "Training examples per class (no imbalance correction in this lineage):", ""]
        lines += ["| class | train |", "| --- | --- |", *(f"| {name} | {n} |" for name, n in counts.items())]
    return "\n".join(lines)


def _results(meta: dict) -> str:
    metrics = meta.get("metrics", {})
    lines = ["## Results", ""]
    for split in ("test", "validation"):
        m = metrics.get(split)
        if m:
            lines.append(
                f"- {split} (n = {m['n']}): accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f},"
                f" macro-precision {m['macro_precision']:.4f}, macro-recall {m['macro_recall']:.4f}"
            )
    embedding = metrics.get("embedding")
    if embedding:
        n = (meta.get("data") or {}).get("sizes", {}).get("validation")
        lines.append(
            f"- validation embeddings (n = {n}): silhouette by class {embedding.get('silhouette', float('nan')):.4f},"
            f" 5-NN accuracy {embedding.get('knn_accuracy', float('nan')):.4f}"
        )
    per_class = (metrics.get("test") or {}).get("per_class")
    if per_class:
        lines += [
            "",
            "Test, per class:",
            "",
            "| class | precision | recall | F1 | n |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in meta.get("class_names", []):
            r = per_class.get(name)
            if r:
                lines.append(
                    f"| {name} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1-score']:.4f} | {int(r['support'])} |"
                )
    return "\n".join(lines) if len(lines) > 2 else ""


def _lineage(meta: dict) -> str:
    lineage = meta.get("lineage", [])
    if not any(entry.get("adapter") for entry in lineage):
        return "## LoRA lineage\n\nNo LoRA: every phase trained every backbone weight."
    rows = ["| phase | adapter | afterwards |", "| --- | --- | --- |"]
    for entry in lineage:
        a = entry.get("adapter")
        if a:
            shown = f"r {a['r']}, alpha {a['alpha']}, on {', '.join(a['target_modules'])}"
            rows.append(f"| {entry['phase']} | {shown} | {a['then']} |")
        else:
            rows.append(f"| {entry['phase']} | none: every weight trained | |")
    lines = ["## LoRA lineage", "", *rows]
    record = meta.get("lora")
    if record and form_of(meta) in ("artifact", "adapter"):
        lines += [
            "",
            f"The peft adapter of this folder (rank {record['rank']}, phases {', '.join(record['phases'])}) applies to"
            f" `{record['base']}`.",
        ]
    elif form_of(meta) in ("merged", "sentence-transformers"):
        lines += ["", "The adapters are merged into this folder's weights."]
    return "\n".join(lines)


def _usage(meta: dict, path: str) -> str:
    texts = repr(EXAMPLE_TEXTS)
    blocks = ["## Usage"]
    if meta.get("head"):
        blocks += [
            "### dcl-dist (the classifier)",
            f"```bash\nprintf '%s\\n' {' '.join(repr(t) for t in EXAMPLE_TEXTS)} > texts.txt\n"
            f"dcl-dist predict --model {path} --input texts.txt --output predictions.jsonl\n```",
            "```python\nfrom dcl_dist.inference import Predictor\n\n"
            f"predictor = Predictor.load({path!r})\nfor label, probabilities in predictor.predict({texts}):\n"
            "    print(label, probabilities)\n```",
        ]
    if has_backbone(meta):
        blocks += [
            "### sentence-transformers (the encoder: backbone, pooling, Dense layers)",
            "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
            f"model = SentenceTransformer({path!r})\nembeddings = model.encode({texts})\nprint(embeddings.shape)\n```",
            "### transformers (the backbone alone: pooled token states, before the Dense layers)",
            _transformers_snippet(path, meta, texts),
        ]
    adapter = adapter_folder(meta, path)
    if adapter is not None:
        base = meta["lora"]["base"]
        blocks += [
            "### peft (the adapter on its base model)",
            "```python\nfrom peft import PeftModel\nfrom transformers import AutoModel\n\n"
            f"base = AutoModel.from_pretrained({base!r})\nmodel = PeftModel.from_pretrained(base, {adapter!r})\n"
            "print(model.peft_config)\n```",
        ]
    return "\n\n".join(blocks)


def _transformers_snippet(path: str, meta: dict, texts: str) -> str:
    pooled = (
        "sentence = states[:, 0]"
        if meta.get("pooling") == "cls"
        else 'mask = batch["attention_mask"].unsqueeze(-1)\nsentence = (states * mask).sum(1) / mask.sum(1)'
    )
    return (
        "```python\nimport torch\nfrom transformers import AutoModel, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({path!r})\nmodel = AutoModel.from_pretrained({path!r})\n"
        f"batch = tokenizer({texts}, padding=True, truncation=True, max_length={meta.get('max_length')},"
        ' return_tensors="pt")\n'
        f"with torch.no_grad():\n    states = model(**batch).last_hidden_state\n{pooled}\nprint(sentence.shape)\n```"
    )
