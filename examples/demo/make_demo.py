"""Deterministic generator of the synthetic, imbalanced banking-support intent dataset used by the offline quickstart.

Run ``python examples/demo/make_demo.py [--seed 13]`` to write ``train.jsonl``, ``test.jsonl`` and ``labels.json``
here and in dcl_dist/demo_data/ (the copy the wheel ships), or ``--out DIR`` to write them to DIR alone. The same
seed always writes byte-identical files.

intents.py holds the vocabulary. Every class has a few near-ambiguous templates that borrow the wording of another
class, and a few held-out paraphrases that appear only in the test split, so that neither a bag-of-words model nor a
fine-tuned encoder scores 100%.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from intents import CLASSES, CONTEXTS, PREFIXES, SLOTS, SUFFIXES

HERE = Path(__file__).resolve().parent
DEFAULT_OUTS = (HERE, HERE.parents[1] / "dcl_dist" / "demo_data")
"""Where the files go without --out: the example, and the package's copy of it."""

DEFAULT_SEED = 13
TEST_PER_CLASS = 40
HELD_OUT_PER_CLASS = 10  # test texts per class drawn from the held-out paraphrases
AMBIGUOUS_SHARE = 0.2  # share of the other texts drawn from the ambiguous templates
MIN_WORDS = 4
MAX_WORDS = 30

_SLOT_RE = re.compile(r"\{(\w+)\}")
_CHOICE_RE = re.compile(r"\[([^\[\]]*)\]")
_I_WORD_RE = re.compile(r"^I('|$)")


def _amount(rng: random.Random) -> str:
    """A money amount in one of a few common spellings."""
    value = rng.choice((5, 12, 20, 25, 40, 50, 75, 89, 120, 150, 200, 250, 300, 450, 500, 800, 1200, 2500))
    style = rng.randrange(5)
    if style == 0:
        return f"£{value}.{rng.randrange(100):02d}"
    if style == 1:
        return f"€{value}"
    if style == 2:
        return f"${value}"
    if style == 3:
        return f"{value} euros"
    return f"£{value}"


def _render(template: str, rng: random.Random) -> str:
    """Fill the inline choices and slots of one template."""
    text = _CHOICE_RE.sub(lambda m: rng.choice(m.group(1).split("|")), template)

    def fill(match: re.Match[str]) -> str:
        slot = match.group(1)
        return _amount(rng) if slot == "amount" else rng.choice(SLOTS[slot])

    text = _SLOT_RE.sub(fill, text)
    return " ".join(text.split())


def _typo(text: str, rng: random.Random) -> str:
    """Swap, drop or double one letter in one word of at least five letters."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if len(word) >= 5 and word.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    pos = rng.randrange(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        word = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
    elif kind == 1:
        word = word[:pos] + word[pos + 1 :]
    else:
        word = word[:pos] + word[pos] + word[pos:]
    words[i] = word
    return " ".join(words)


def _keeps_capital(word: str) -> bool:
    """Whether a sentence-initial word stays capitalised after a greeting such as "Hi," (I, I'm, PIN, ATM)."""
    return bool(_I_WORD_RE.match(word)) or (len(word) > 1 and word.isupper())


def _decorate(body: str, starts_with_slot: bool, rng: random.Random) -> str:
    """Add context, politeness, casual lower-casing and typos the way real support messages vary."""
    keep_case = _keeps_capital(body.split(" ", 1)[0]) or (starts_with_slot and body[0].isupper())
    text = body[0].upper() + body[1:]
    if rng.random() < 0.12:
        context = rng.choice(CONTEXTS)
        text = f"{context} {text}"
        keep_case = _keeps_capital(context.split(" ", 1)[0])
    if rng.random() < 0.3:
        prefix = rng.choice(PREFIXES)
        if prefix.endswith(",") and not keep_case:
            text = text[0].lower() + text[1:]
        text = f"{prefix} {text}"
    if rng.random() < 0.25:
        if text[-1] not in ".?!":
            text += "."
        text = f"{text} {rng.choice(SUFFIXES)}"
    if rng.random() < 0.1:
        text = text.lower().rstrip(".")
    if rng.random() < 0.12:
        text = _typo(text, rng)
    return text


def _dedupe_key(text: str) -> str:
    """Case- and punctuation-insensitive form, so near-identical texts count as duplicates."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def _draw(
    name: str,
    groups: tuple[tuple[str, ...], ...],
    weights: tuple[float, ...],
    count: int,
    seen: set[str],
    rng: random.Random,
) -> list[str]:
    """Draw ``count`` texts from weighted template groups whose dedupe keys are not yet in ``seen`` (updated)."""
    texts: list[str] = []
    attempts = 0
    while len(texts) < count:
        attempts += 1
        if attempts > 500 * count:
            raise RuntimeError(f"could not draw {count} distinct texts for {name!r}")
        template = rng.choice(rng.choices(groups, weights)[0])
        text = _decorate(_render(template, rng), template.startswith("{"), rng)
        key = _dedupe_key(text)
        if key in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        seen.add(key)
        texts.append(text)
    return texts


def build_demo_splits(seed: int = DEFAULT_SEED) -> dict[str, list[dict[str, str]]]:
    """Build the train and test records in a fixed, seed-determined order."""
    rng = random.Random(seed)
    seen: set[str] = set()
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for cls in CLASSES:
        seen_groups = (cls.templates, cls.ambiguous)
        seen_weights = (1.0 - AMBIGUOUS_SHARE, AMBIGUOUS_SHARE)
        n_seen_test = TEST_PER_CLASS - HELD_OUT_PER_CLASS
        texts = _draw(cls.name, seen_groups, seen_weights, cls.train_count + n_seen_test, seen, rng)
        texts += _draw(cls.name, (cls.held_out,), (1.0,), HELD_OUT_PER_CLASS, seen, rng)
        train += [{"text": t, "label": cls.name} for t in texts[: cls.train_count]]
        test += [{"text": t, "label": cls.name} for t in texts[cls.train_count :]]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    """Write one JSON object per line, UTF-8, with sorted keys and LF line ends."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def write_demo_dataset(out_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``labels.json`` (sorted label names) to ``out_dir``.

    Returns the number of records per split.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = build_demo_splits(seed)
    for split, records in splits.items():
        _write_jsonl(out_dir / f"{split}.jsonl", records)
    labels = sorted(cls.name for cls in CLASSES)
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8", newline="\n")
    return {split: len(records) for split, records in splits.items()}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Write the synthetic banking-intent demo dataset.")
    parser.add_argument("--out", type=Path, help="output directory (default: examples/demo and dcl_dist/demo_data)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    for out in [args.out] if args.out else DEFAULT_OUTS:
        counts = write_demo_dataset(out, args.seed)
        print(json.dumps({"out": str(out), **counts}))


if __name__ == "__main__":
    main()
