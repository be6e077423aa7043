"""dcl-dist: init | train | report | evaluate | predict | export | plan | keys.

dcl-dist init my_project --demo-data                         # a commented config (and the demo data) to start from
dcl-dist train --config configs/quickstart.yaml [--phase cl] [key=value ...]
deepspeed --num_gpus 8 $(which dcl-dist) train --config X    # the same, on 8 ranks
dcl-dist report runs/x                                       # runs/x/report/report.html (train writes it too)
dcl-dist evaluate --model runs/x/ft/artifact --data test.jsonl
dcl-dist predict --model runs/x/ft/artifact --input texts.txt --output predictions.jsonl
dcl-dist export --run runs/x --to adapter|merged|sentence-transformers [--out DIR]

No command replaces a file or folder you have unless you say --overwrite, and then only once the new one is
complete: outputs are written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

# only light imports here: main() installs the stop handlers first, so that a Ctrl-C during the heavy imports
# (config, torch, transformers) ends in one message too
from dcl_dist import interrupt, logs
from dcl_dist.errors import DclDistError, Interrupted
from dcl_dist.rundir import RunDir

log = logging.getLogger("dcl_dist")

ABORTED_EXIT_CODE = 130
"""A second Ctrl-C: aborted without a checkpoint (128 + SIGINT, as a shell reports it)."""


def _rank() -> int:
    """This process's rank, from the launcher's environment (before or after the process group exists)."""
    return logs.rank_from_env()


def _setup_logging() -> None:
    logs.setup(_rank())
    logs.quiet_transformers()


def _check_versions() -> None:
    """A library version known not to work stops here; one outside the tested range is named once (rank 0)."""
    from dcl_dist import versions

    broken = versions.broken()
    if broken:
        raise DclDistError("; ".join(broken))
    if _rank() == 0:
        for message in versions.untested():
            log.warning(message)


def _print_summary(metrics: dict) -> None:
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            print(
                f"{split}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}"
                f"  macro-P {m['macro_precision']:.4f}"
                f"  macro-R {m['macro_recall']:.4f}  (n={m['n']})"
            )


def cmd_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from dcl_dist.config import load_config

    cfg = load_config(args.config, args.overrides)  # before the heavy imports: a typo fails in a second
    from dcl_dist import dist
    from dcl_dist.pipeline import run_variant

    if _rank() == 0:
        logs.log_device()
    try:
        dist.init()
        interrupt.set_at_once(dist.world_size() == 1)
        metrics = run_variant(cfg, args.phase)
    finally:
        dist.shutdown()
    if _rank() == 0:
        ft_metrics = metrics.get("phases", {}).get("ft", {})
        if "test" in ft_metrics:
            print_report(ft_metrics["test"])
        _print_summary(metrics)
        _finish_run(cfg, metrics, time.perf_counter() - started)
    return 0


def _finish_run(cfg, metrics: dict, seconds: float) -> None:
    """Rank 0, after train: the run report (unless logging.report is false) and the summary table."""
    from dcl_dist import summary

    run_dir = RunDir(cfg.run.dir)
    report = None
    if cfg.logging.report:
        from dcl_dist.report import write_report

        try:
            report = write_report(run_dir.root)
        except Exception as e:  # noqa: BLE001 - the training is done and saved: a failing figure must not undo that
            why = f"{type(e).__name__}: {e}"
            log.warning("the run report could not be written (%s): dcl-dist report %s tries again", why, run_dir)
    print(f"\ntrain took {summary.duration(seconds)}; per phase:")
    print(summary.summary_text(run_dir, list(cfg.phases()), metrics))
    if report is not None:
        print(f"report: {report}")


def cmd_report(args: argparse.Namespace) -> int:
    from dcl_dist.report import write_report

    print(f"report: {write_report(Path(args.run), args.map)}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from dcl_dist.starter import CONFIG_FILE, init_project

    folder = Path(args.dir)
    for path in init_project(folder, args.demo_data):
        print(f"wrote {path}")
    print(f"next: cd {folder} && dcl-dist train --config {CONFIG_FILE}")
    return 0


def print_report(m: dict) -> None:
    per_class = m.get("per_class", {})
    class_names = [k for k in per_class if k not in ("accuracy", "macro avg", "weighted avg")]
    if not class_names:
        return
    width = max(len(c) for c in class_names)
    print(f"{'class':<{width}}  precision  recall  f1      support")
    for c in class_names:
        r = per_class[c]
        print(f"{c:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1-score']:6.4f}  {int(r['support'])}")
    print("confusion matrix (rows: true, columns: predicted):")
    for c, row in zip(class_names, m.get("confusion_matrix", [])):
        print(f"  {c:<{width}} " + " ".join(f"{v:5d}" for v in row))


def _texts_and_labels(path: str, text_field: str, label_field: str | None):
    from dcl_dist.data.splits import read_rows

    texts, raw, _ = read_rows(path, "input", text_field, [label_field] if label_field else None, "skip")
    return texts, ([r[0] for r in raw] if raw is not None else None)


def output_file(path: str | None, overwrite: bool, inputs: list[str]) -> Path | None:
    """The --output file, checked before anything loads: never an input, in a folder that exists and is writable;
    an existing file only with --overwrite (it is replaced once the new result is complete: atomic.py)."""
    if path is None:
        return None
    out = Path(path)
    if any(out.resolve() == Path(i).resolve() for i in inputs):
        raise DclDistError(f"--output {out} is the input file: write to another file")
    if out.is_dir():
        raise DclDistError(f"--output {out} is a folder: give a file name")
    if not out.resolve().parent.is_dir():
        raise DclDistError(f"--output {out}: the folder {out.resolve().parent} does not exist: create it first")
    if not os.access(out.resolve().parent, os.W_OK):
        raise DclDistError(f"--output {out}: the folder {out.resolve().parent} is not writable: choose another")
    if out.exists() and not overwrite:
        raise DclDistError(
            f"--output {out} exists: add --overwrite to replace it (only once the new result is complete), or choose"
            " another file"
        )
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dcl_dist.atomic import write_text
    from dcl_dist.inference import Predictor

    model = Path(args.model) if args.model else RunDir(args.run).phase("ft").artifact
    out = output_file(args.output, args.overwrite, [args.data])
    texts, labels = _texts_and_labels(args.data, args.text_field, args.label_field)  # a bad file fails first
    predictor = Predictor.load(model)
    metrics = predictor.evaluate(texts, [str(x) for x in labels], args.batch_size, source=args.data)
    print_report(metrics)
    _print_summary({"test": metrics})
    if out is not None:
        write_text(out, json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dcl_dist.atomic import open_for_writing
    from dcl_dist.inference import Predictor

    out = output_file(args.output, args.overwrite, [args.input])
    texts, _ = _texts_and_labels(args.input, args.text_field, None)  # a bad file fails before the model loads
    predictor = Predictor.load(Path(args.model))
    predictions = predictor.predict(texts, args.batch_size)
    with open_for_writing(out) if out is not None else contextlib.nullcontext(sys.stdout) as f:
        for text, (label, proba) in zip(texts, predictions):
            f.write(json.dumps({"text": text, "label": label, "probabilities": proba}, ensure_ascii=False) + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dcl_dist.export import export

    out = export(Path(args.run), args.to, Path(args.out) if args.out else None, args.phase, args.overwrite)
    print(f"{args.to}: {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from dcl_dist.config import dump_yaml, load_config
    from dcl_dist.data.batch_plan import accumulation_steps, check_world

    cfg = load_config(args.config, args.overrides)
    print(dump_yaml(cfg))
    print(f"variant {cfg.run.variant}: phases {' -> '.join(cfg.phases())}")
    for phase in cfg.phases():
        p = getattr(cfg, phase)
        for world in args.world_sizes:
            problems = check_world(cfg, phase, world)
            if problems:
                print(f"  {phase} on {world} ranks: {problems[0]}")
                continue
            if p.micro_batch_size_per_rank == "auto":
                print(
                    f"  {phase} on {world} ranks: micro auto (found at the start of the phase), global batch"
                    f" {p.global_batch_size or 'micro x ' + str(world)}"
                )
                continue
            acc = accumulation_steps(cfg, phase, world)
            print(
                f"  {phase} on {world} ranks: micro {p.micro_batch_size_per_rank} x {world} ranks x {acc}"
                f" accumulation = global batch {p.micro_batch_size_per_rank * world * acc}"
            )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from dcl_dist.config import schema_keys, type_name

    for key, (hint, default, doc) in schema_keys().items():
        if args.prefix and not key.startswith(args.prefix):
            continue
        print(f"{key}  ({type_name(hint)}, default {default!r})\n    {doc}")
    return 0


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcl-dist", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="write a commented starter config (and the demo data) into a folder")
    init.add_argument("dir", help="the folder to write (made if missing)")
    init.add_argument("--demo-data", action="store_true", help="also write the quickstart's demo data into DIR/data")
    init.set_defaults(func=cmd_init)

    train = sub.add_parser("train", help="run a variant (or one phase of it)")
    train.add_argument("--config", required=True, help="YAML config file")
    train.add_argument("--phase", choices=["dae", "cl", "ft", "joint"], help="run only this phase of the variant")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cl.lr=1e-5")
    train.set_defaults(func=cmd_train)

    report = sub.add_parser("report", help="write a run's report: RUN/report/report.html and its figures as PNGs")
    report.add_argument("run", help="the run directory (run.dir)")
    report.add_argument(
        "--map", choices=["pca", "tsne"], default="pca", help="how the embeddings are mapped to 2-D (t-SNE is slower)"
    )
    report.set_defaults(func=cmd_report)

    evaluate = sub.add_parser("evaluate", help="metrics of a trained classifier on a labelled file")
    where = evaluate.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="an artifact folder with a head (a run's ft/artifact)")
    where.add_argument("--run", help="a run directory (its ft/artifact is used)")
    evaluate.add_argument("--data", required=True, help="jsonl / csv / tsv / parquet file with texts and labels")
    evaluate.add_argument("--text-field", default="text")
    evaluate.add_argument("--label-field", default="label")
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--output", help="also write the metrics as JSON here")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="labels and class probabilities for new texts")
    predict.add_argument(
        "--model", required=True, help="a folder with a head: a run's ft/artifact or any form dcl-dist export writes"
    )
    predict.add_argument("--input", required=True, help="jsonl / csv (text field) or .txt (one text per line)")
    predict.add_argument("--output", help="jsonl to write (default: standard output)")
    predict.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    predict.add_argument("--text-field", default="text")
    predict.add_argument("--batch-size", type=positive_int, default=64)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser(
        "export", help="a run's model as a peft adapter, a merged model or a sentence-transformers folder"
    )
    export.add_argument("--run", required=True, help="the run directory (run.dir)")
    export.add_argument(
        "--to",
        required=True,
        choices=["adapter", "merged", "sentence-transformers"],
        help="adapter: a peft adapter folder on the base model (+ dense layers, head); merged: the model with its"
        " adapters merged in; sentence-transformers: the same folder, for SentenceTransformer(...)",
    )
    export.add_argument("--out", help="folder to write (default: <run>/export/<form>)")
    export.add_argument(
        "--overwrite", action="store_true", help="replace --out even if it is not an earlier export of this form"
    )
    export.add_argument("--phase", choices=["dae", "cl", "ft", "joint"], help="export this phase (default: the last)")
    export.set_defaults(func=cmd_export)

    plan = sub.add_parser("plan", help="print the resolved config and each phase's batch arithmetic")
    plan.add_argument("--config", required=True)
    plan.add_argument("--world-sizes", type=positive_int, nargs="+", default=[1, 8])
    plan.add_argument("overrides", nargs="*")
    plan.set_defaults(func=cmd_plan)

    keys = sub.add_parser("keys", help="every config key with its type, default and meaning")
    keys.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. cl.")
    keys.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher appends --local_rank=N; the rank comes from the environment anyway
    argv = [a for a in argv if not a.startswith("--local_rank")]
    args = build_parser().parse_args(argv)
    try:
        with interrupt.stop_on_signals(at_once=True):  # cmd_train turns at_once off on many ranks
            _setup_logging()
            _check_versions()
            return args.func(args)
    except interrupt.StopNow as e:
        kept = (
            "finished phases and the last checkpoint are kept"
            if args.command == "train"
            else "nothing was written, and an earlier output is as it was"
        )
        print(f"dcl-dist: stopped on {e.signal_name}: {kept}: run the same command again", file=sys.stderr)
        return Interrupted.exit_code
    except KeyboardInterrupt:
        print(
            "dcl-dist: aborted on a second SIGINT, without a checkpoint of this step: finished phases and the last"
            " complete checkpoint are kept: run the same command again to resume from it",
            file=sys.stderr,
        )
        return ABORTED_EXIT_CODE
    except DclDistError as e:
        # a stop request is the same on every rank: one rank says so; any other error may be one rank's own
        if not isinstance(e, Interrupted) or _rank() == 0:
            print(f"dcl-dist: {e.label}: {e}" if e.label else f"dcl-dist: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a file the user named, or the run directory, cannot be read or written
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"dcl-dist: error: {where}{e.strerror or e}: check that the path exists, its permissions and the free"
            " space; finished phases and checkpoints are kept, so the same command resumes",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
