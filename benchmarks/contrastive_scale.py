"""Memory and time per example of phase cl's in-batch step against the global batch size, on gloo ranks (CPU).

Three ways to compute one optimiser step of the in-batch cosine-MSE (or SupCon) loss over a global batch of N
texts spread over W ranks (N / W each), with phase cl's model (ContrastiveModel) in a DeepSpeed engine:

  plain    every rank gathers the batch with its graph and computes the whole N x N matrix (before issue 13)
  local    every rank computes its own rows against the gathered columns, block by block (losses/local_rows.py)
  cached   local, with the micro-batch embedded in cached chunks of --chunk texts (cl.embed_chunk_size)

Each mode runs in one group of W spawned ranks, sizes ascending; before each size a rank frees what it can
(gc, malloc_trim) and resets its peak resident set size (/proc/self/clear_refs), so "peak" is the most that rank
held during that size's steps. The ranks run with glibc's MALLOC_MMAP_THRESHOLD_=131072 (unless
--glibc-default): by default glibc raises that threshold as large blocks are freed, after which the freed chunk
activations stay in its heap, fragmented between small live objects, and RSS grows with the number of chunks
although the live tensors do not (measured: +170 MiB for 32 checkpointed chunks whose live memory is flat).
Peak allocated: the most bytes glibc had handed out and not taken back (live memory, without what the allocator
keeps free), sampled from a thread in one more, untimed step. Time per example: the mean wall time of the timed
steps (--steps, and at least --min-seconds in all) / N. Also counted: every collective of the last step (calls
and bytes, dist.counting_collectives). The model: a small random BERT (the tests' tiny model, MiniLM's
tokenizer) or, with --model minilm, the packaged all-MiniLM-L6-v2; synthetic texts of 4 to 15 words (at most 31
tokens) padded to --max-length, 16 classes, one text in 20 a copy of another, tokenized once by the parent;
each rank loads its rows as tensors.

    python benchmarks/contrastive_scale.py --world 4   # N = 1,024 ... 65,536; plain to 4,096, local to 16,384
    python benchmarks/contrastive_scale.py --world 4 --model minilm --modes local cached --sizes 1024 2048 \
        --chunk 64 --min-seconds 0 --out docs/results/cpu/minilm   # the time ratio with a real model's shape
    python benchmarks/contrastive_scale.py --world 2 --sizes 64 256 --steps 1 --min-seconds 0 --out /tmp/scale  # smoke

Writes contrastive_scale.json and contrastive_scale.png under --out (default docs/results/cpu) and prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

MODES = ("plain", "local", "cached")
SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
CLASSES = 16
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=int, default=4, help="gloo ranks")
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="global batch sizes")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--plain-max", type=int, default=4096, help="largest N for plain (its N x N graph per rank)")
    p.add_argument("--local-max", type=int, default=16384, help="largest N for local (every activation kept)")
    p.add_argument("--chunk", type=int, default=256, help="texts per cached chunk")
    p.add_argument("--loss", choices=("cosine_mse", "supcon"), default="cosine_mse")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=2, help="ZeRO stage")
    p.add_argument("--steps", type=int, default=2, help="timed optimiser steps per size")
    p.add_argument("--min-seconds", type=float, default=8.0, help="timed steps run at least this long in all")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--hidden", type=int, default=32, help="the tiny random model's width")
    p.add_argument(
        "--model",
        choices=("tiny", "minilm"),
        default="tiny",
        help="the tests' tiny random BERT (2 layers, --hidden) or the packaged all-MiniLM-L6-v2 (6 layers, 384): a "
        "model whose forward is about a third of its training step, as in the models users train",
    )
    p.add_argument("--max-length", type=int, default=32, help="tokens every text is padded to (the longest is 31)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "cpu")
    p.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold (module doc)")
    args = p.parse_args(argv)
    bad = [n for n in args.sizes if n % args.world]
    if bad:
        p.error(f"--sizes {bad} do not split evenly over --world {args.world}")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# On each rank


def peak_rss_mib() -> float:
    """This process's peak resident set size since the last reset_peak_rss (VmHWM)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def reset_peak_rss() -> None:
    """Hand freed memory back to the system, then start the peak afresh from the current resident size."""
    gc.collect()
    LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


LIBC = ctypes.CDLL("libc.so.6")  # glibc: the benchmark measures on Linux (VmHWM, clear_refs, mallinfo2)
LIBC.mallinfo2.restype = _MallInfo2


class AllocatedPeak:
    """The most bytes the C allocator had handed out and not taken back (glibc's mallinfo2: in use in every
    arena plus mmapped blocks), sampled every `interval` seconds from a thread while the block runs: the live
    memory, what torch.cuda.max_memory_allocated reports on a GPU, without what the allocator keeps free
    (fragmentation, freed pages it has not returned), which the resident set size includes."""

    def __init__(self, interval: float = 0.0005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def allocated(self) -> int:
        info = LIBC.mallinfo2()
        return info.uordblks + info.hblkhd

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.allocated())
            time.sleep(self.interval)

    def __enter__(self) -> AllocatedPeak:
        self.start = self.peak = self.allocated()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.allocated())


class PlainGatheredLoss:
    """The loss before issue 13: the whole batch gathered with its graph and the N x N matrix on every rank."""

    def __init__(self, loss_name: str):
        self.loss_name = loss_name

    def __call__(self, embeddings, levels, sources=None):
        from dcl_dist import dist
        from dcl_dist.losses.pair_cosine import all_pairs_cosine_mse, level_weights
        from dcl_dist.losses.supcon import supcon

        sizes = dist.all_gather_ints(embeddings.shape[0])
        z = dist.all_gather_with_grad(embeddings.float(), sizes)
        levels, sources = dist.all_gather_no_grad(levels, sizes), dist.all_gather_no_grad(sources, sizes)
        if self.loss_name == "cosine_mse":
            return all_pairs_cosine_mse(z, levels, level_weights(1, None), sources)
        return supcon(z, levels[:, 0], 0.1, sources)


def global_batch(tokenizer, n: int, max_length: int) -> dict:
    """A synthetic global batch of n texts, tokenized, every text padded to max_length tokens: the longest text
    of a larger batch is longer, and padding to it would make each text's activations grow with N (25 tokens at
    1,024 texts, 31 at 65,536), which is not what is measured."""
    import random

    import torch

    rng = random.Random(n)
    texts, labels, sources = [], [], []
    for i in range(n):
        if i % 20 == 19:  # a copy of an earlier text: the same source
            j = rng.randrange(i)
            text, label, source = texts[j], labels[j], sources[j]
        else:
            label, source = rng.randrange(CLASSES), i
            text = " ".join([WORDS[label]] + rng.choices(WORDS, k=rng.randint(3, 14)))
        texts.append(text)
        labels.append(label)
        sources.append(source)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "levels": torch.tensor(labels)[:, None],
        "sources": torch.tensor(sources),
    }


def rank_batch(path: str, world: int, rank: int) -> dict:
    """This rank's share of the global batch the parent saved: tensors, as a data loader hands them over. (Built
    here instead, 65,536 Python strings and their tokenization left tens of MiB of freed holes in the rank's heap
    that the reset before the size hands back and the step then touches again: peak RSS grew with N because of
    the benchmark's own data, not the step; one process, 16,384 rows in 64 chunks: +71 MiB over the step's start
    against +31 MiB with the batch loaded.)"""
    import torch

    saved = torch.load(path, mmap=True)
    n = saved["input_ids"].shape[0]
    mine = slice(rank * n // world, (rank + 1) * n // world)
    return {name: value[mine].clone() for name, value in saved.items()}


def build_engine(model_dir: str, mode: str, args_dict: dict, run_dir: str):
    import torch

    from dcl_dist import engine
    from dcl_dist.config import load_config
    from dcl_dist.losses.pair_cosine import InBatchCosineLoss, level_weights
    from dcl_dist.losses.supcon import SupConLoss
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone
    from dcl_dist.phases.contrastive import ContrastiveModel

    overrides = [f"run.dir={run_dir}", f"data.train={__file__}", f"deepspeed.zero_stage={args_dict['zero']}"]
    cfg = load_config(None, [*overrides, "cl.micro_batch_size_per_rank=1", "cl.max_grad_norm=0"])
    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(model_dir, "eager"), "mean", n_dense=1)
    if mode == "plain":
        loss = PlainGatheredLoss(args_dict["loss"])
    elif args_dict["loss"] == "cosine_mse":
        loss = InBatchCosineLoss(level_weights(1, None))
    else:
        loss = SupConLoss(0.1)
    chunk = args_dict["chunk"] if mode == "cached" else None
    model = ContrastiveModel(encoder, loss, chunk)
    return engine.initialize(model, cfg, "cl", total_steps=1000, hidden_size=encoder.hidden_size)


def measure_mode(model_dir: str, mode: str, sizes: list[int], args_dict: dict, run_dir: str) -> list[dict]:
    """On every rank: one engine, then each size in turn: warm-up steps, timed steps, the peak and the counts."""
    import torch

    from dcl_dist import dist

    torch.set_num_threads(args_dict["threads"])
    model_engine = build_engine(model_dir, mode, args_dict, run_dir)
    out = []
    for n in sizes:
        batch = rank_batch(batch_path(args_dict["batches"], n), dist.world_size(), dist.rank())
        dist.barrier()
        reset_peak_rss()
        baseline = peak_rss_mib()
        times, step = [], 0
        # at least --steps timed steps and --min-seconds of them (rank 0 decides: every rank runs as many)
        while dist.broadcast_object(
            step < args_dict["warmup"] + args_dict["steps"] or sum(times) < args_dict["min_seconds"]
        ):
            step += 1
            dist.barrier()
            start = time.perf_counter()
            with dist.counting_collectives() as counts:
                loss = model_engine(batch)
                model_engine.backward(loss)
                model_engine.step()
            dist.barrier()
            if step > args_dict["warmup"]:
                times.append(time.perf_counter() - start)
        row = {"mode": mode, "n": n, "rank": dist.rank(), "baseline_mib": baseline, "peak_mib": peak_rss_mib()}
        row.update(seconds=sum(times) / len(times), steps=len(times), loss=float(loss.item()))
        # one more, untimed step with the allocator sampled (the sampling thread would perturb the timed ones)
        dist.barrier()
        with AllocatedPeak() as allocated:
            model_engine.backward(model_engine(batch))
            model_engine.step()
        row.update(start_allocated_mib=allocated.start / 2**20, peak_allocated_mib=allocated.peak / 2**20)
        row.update(calls=dict(counts.calls), bytes=dict(counts.bytes))
        out.append(row)
        del batch, loss
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The parent


def batch_path(folder: str, n: int) -> str:
    return f"{folder}/batch_{n}.pt"


def run(args: argparse.Namespace) -> list[dict]:
    import torch
    from transformers import AutoTokenizer

    from helpers import make_tiny_model, minilm_path
    from multiproc.spawn import run_ranks

    if not args.glibc_default:  # read by each spawned rank's C library at start-up
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "minilm":
            model_dir = str(minilm_path())
            args.hidden = json.loads((minilm_path() / "config.json").read_text())["hidden_size"]  # for the table
        else:
            model_dir = str(make_tiny_model(Path(tmp) / "model", hidden=args.hidden))
        args_dict = {k: v for k, v in vars(args).items() if k != "out"}
        args_dict["batches"] = tmp + "/batches"
        Path(args_dict["batches"]).mkdir()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for n in args.sizes:
            torch.save(global_batch(tokenizer, n, args.max_length), batch_path(args_dict["batches"], n))
        for mode in args.modes:
            cap = {"plain": args.plain_max, "local": args.local_max}.get(mode)
            sizes = sorted(n for n in args.sizes if cap is None or n <= cap)
            if not sizes:
                continue
            started = time.perf_counter()
            per_rank = run_ranks(measure_mode, args.world, Path(tmp), model_dir, mode, sizes, args_dict, tmp + "/run")
            rows += summarise(per_rank, args.world)
            print(f"{mode}: {len(sizes)} sizes in {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def summarise(per_rank: list[list[dict]], world: int) -> list[dict]:
    """One row per size: the largest peak over ranks, rank 0's time and counts."""
    rows = []
    for by_rank in zip(*per_rank):
        first = by_rank[0]
        rows.append(
            {
                "mode": first["mode"],
                "global_batch": first["n"],
                "ranks": world,
                "peak_rss_mib": max(r["peak_mib"] for r in by_rank),
                "peak_allocated_mib": max(r["peak_allocated_mib"] for r in by_rank),
                "start_allocated_mib": max(r["start_allocated_mib"] for r in by_rank),
                "start_rss_mib": max(r["baseline_mib"] for r in by_rank),
                "seconds_per_step": max(r["seconds"] for r in by_rank),
                "timed_steps": first["steps"],
                "ms_per_example": 1000 * max(r["seconds"] for r in by_rank) / first["n"],
                "loss": first["loss"],
                "collectives_per_step": first["calls"],
                "bytes_per_step": first["bytes"],
            }
        )
    return rows


def table(rows: list[dict], hidden: int) -> str:
    """Markdown: per mode and size, peak RSS and its growth beyond the N x hidden fp32 buffer, peak allocated
    (live) memory and its growth, time per example."""
    lines = [
        "| mode | global batch | peak RSS / rank (MiB) | growth from the smallest, less N x hidden x 4 B (%) "
        "| peak allocated / rank (MiB) | its growth, less N x hidden x 4 B (MiB) "
        "| s / step | ms / example | collectives / step (calls, MiB sent by rank 0) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        first = mine[0]
        for r in mine:
            buffer = (r["global_batch"] - first["global_batch"]) * hidden * 4 / 2**20
            growth = 100 * (r["peak_rss_mib"] - buffer - first["peak_rss_mib"]) / first["peak_rss_mib"]
            live = r["peak_allocated_mib"] - buffer - first["peak_allocated_mib"]
            comm = sum(r["collectives_per_step"].values()), sum(r["bytes_per_step"].values()) / 2**20
            lines.append(
                f"| {mode} | {r['global_batch']:,} | {r['peak_rss_mib']:.0f} | {growth:+.1f} "
                f"| {r['peak_allocated_mib']:.0f} | {live:+.1f} "
                f"| {r['seconds_per_step']:.2f} | {r['ms_per_example']:.3f} | {comm[0]}, {comm[1]:.1f} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory, speed) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if mine:
            n = [r["global_batch"] for r in mine]
            memory.plot(n, [r["peak_rss_mib"] for r in mine], marker="o", label=mode)
            speed.plot(n, [r["ms_per_example"] for r in mine], marker="o", label=mode)
    for ax, label in ((memory, "peak RSS per rank (MiB)"), (speed, "ms per example")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch (texts)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("In-batch contrastive step on gloo ranks (CPU): plain N x N, local rows, cached chunks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["cpus"] = os.cpu_count()
    (args.out / "contrastive_scale.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    plot(rows, args.out / "contrastive_scale.png")
    print(table(rows, args.hidden))
    elapsed = time.perf_counter() - started
    print(f"written: {args.out / 'contrastive_scale.json'}, contrastive_scale.png ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
