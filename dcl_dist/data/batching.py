"""From items to tensors: each epoch's order, every rank's micro-batches, tokenisation with dynamic padding,
and one collator per kind of batch (ft, dae, cl in-batch, cl pairs, joint).

The order of an epoch is a function of (seed, epoch) alone, and it is cut into global batches before it is
split over ranks: a run resumed at step s, on any number of ranks with the same global batch, sees exactly
the examples the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from dcl_dist.data.balance import Entry
from dcl_dist.data.noise import delete_stop_words, delete_words, keyed_rng
from dcl_dist.interrupt import ignore_in_worker
from dcl_dist.seeds import NOISE_COPY, NOISE_DAE, epoch_permutation_rng, epoch_rng, length_shuffle_rng


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    return epoch_permutation_rng(seed, epoch).permutation(n).tolist()


def class_aware_order(labels: list[int], group: int, seed: int, epoch: int) -> list[int]:
    """A permutation in which examples come in same-class groups of `group` (the last of a class may be shorter).

    Groups are shuffled, so a batch holds a random mix of classes in which most examples have a positive.
    """
    rng = epoch_rng(seed, epoch)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    groups = []
    for label in sorted(by_class):
        members = by_class[label][:]
        rng.shuffle(members)
        groups += [members[i : i + group] for i in range(0, len(members), group)]
    rng.shuffle(groups)
    return [i for g in groups for i in g]


LENGTH_WINDOW = 64
"""group_by_length sorts windows of this many global batches by length before cutting them into batches."""


def length_grouped(order: list[int], lengths: list[int], global_batch: int, seed: int, epoch: int) -> list[int]:
    """The epoch's order rearranged so that each global batch holds texts of similar length.

    Windows of LENGTH_WINDOW global batches are sorted by length and cut into global batches, whose order is
    then shuffled (the last, shorter one stays last, so that BatchPlan's cut still falls between batches).
    Random SNIPS batches of 16 carry 1.63 padded tokens per real token; grouped by token count, 1.02 (by word count,
    1.27: the word count is too coarse a proxy to save most of the padding).
    """
    window = global_batch * LENGTH_WINDOW
    batches = []
    for start in range(0, len(order), window):
        ranked = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [ranked[j : j + global_batch] for j in range(0, len(ranked), global_batch)]
    tail = [batches.pop()] if batches and len(batches[-1]) < global_batch else []
    length_shuffle_rng(seed, epoch).shuffle(batches)
    return [i for batch in batches + tail for i in batch]


def even_shard(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """Evaluation shard: (indices, how many are real); every rank gets the same count, the short ones repeat an index.

    ZeRO-3 gathers parameters collectively, so every rank must run the same number of forward passes.
    """
    mine = list(range(rank, n, world))
    per_rank = math.ceil(n / world) if n else 0
    real = len(mine)
    while len(mine) < per_rank:
        mine.append(mine[-1] if mine else 0)
    return mine, real


class Tokenize:
    """Texts -> padded tensors (padding to the longest text of the batch); counts truncated texts."""

    def __init__(self, tokenizer, max_length: int):
        tokenizer.padding_side = "right"  # the TSDAE decoder relies on it (models/decoder.py)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncated = 0

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        if getattr(enc, "encodings", None):
            self.truncated += sum(1 for e in enc.encodings if e.overflowing)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def lengths(self, texts: list[str], chunk: int = 10_000) -> list[int]:
        """Tokens per text after truncation (what group_by_length sorts by); not counted as truncations."""
        out: list[int] = []
        for start in range(0, len(texts), chunk):
            enc = self.tokenizer(texts[start : start + chunk], truncation=True, max_length=self.max_length)
            out += [len(ids) for ids in enc["input_ids"]]
        return out


def _prefixed(prefix: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in batch.items()}


@dataclass
class TextSource:
    """What the collators read: the texts, their label levels and their stable ids."""

    texts: list[str]
    levels: list[tuple[int, ...]] | None
    ids: list[int]


@dataclass
class Noise:
    seed: int
    deletion_ratio: float = 0.6
    copy_stopword_deletion: float = 0.5
    copy_min_words: int = 6

    def dae(self, text: str, sample_id: int, epoch: int, copy: int = 0) -> str:
        """TSDAE deletion noise, new each epoch; an extra copy (copy > 0) is corrupted differently from its original."""
        rng = keyed_rng(self.seed, NOISE_DAE, sample_id, copy, epoch)
        return delete_words(text, self.deletion_ratio, rng)

    def copy(self, text: str, sample_id: int, copy: int, epoch: int) -> str:
        """An extra copy's text (stop-word deletion); the original (copy 0) is returned untouched."""
        if copy == 0:
            return text
        rng = keyed_rng(self.seed, NOISE_COPY, sample_id, copy, epoch)
        return delete_stop_words(text, self.copy_stopword_deletion, self.copy_min_words, rng)


def dae_targets(tokenize: Tokenize, clean: list[str]) -> dict[str, torch.Tensor]:
    """Decoder inputs and labels for reconstructing `clean`: inputs are tokens[:-1], labels tokens[1:], pad -> -100."""
    target = tokenize(clean)
    ids, mask = target["input_ids"], target["attention_mask"]
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return {"decoder_input_ids": ids[:, :-1], "decoder_attention_mask": mask[:, :-1], "decoder_labels": labels}


class Example(NamedTuple):
    """One text as a batch sees it: label levels, stable id (noise key), copy number (0: the original) and the
    epoch its noise is drawn for. The in-memory collators make these from item indices; a stream yields them."""

    text: str
    levels: tuple[int, ...] | None
    id: int
    copy: int = 0
    epoch: int = 0


def ft_batch(tokenize: Tokenize, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Classification batch: texts and class ids (level 0)."""
    batch = tokenize([e.text for e in examples])
    if examples and examples[0].levels is not None:
        batch["labels"] = torch.tensor([e.levels[0] for e in examples])
    return batch


def dae_batch(tokenize: Tokenize, noise: Noise, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Denoising batch: the noisy text for the encoder, the clean text for the decoder."""
    clean = [e.text for e in examples]
    noisy = [noise.dae(e.text, e.id, e.epoch, e.copy) for e in examples]
    return {**tokenize(noisy), **dae_targets(tokenize, clean)}


def contrastive_texts(noise: Noise, examples: list[Example]) -> list[str]:
    """The texts a contrastive batch embeds: originals as they are, extra copies lightly noised."""
    return [noise.copy(e.text, e.id, e.copy, e.epoch) for e in examples]


def source_ids(examples: list[Example]) -> torch.Tensor:
    """(batch,) each example's source: its stable sample id, which its imbalance-correction copies share."""
    return torch.tensor([e.id for e in examples], dtype=torch.long)


def cl_batch(tokenize: Tokenize, noise: Noise, examples: list[Example], with_dae: bool) -> dict[str, torch.Tensor]:
    """In-batch contrastive batch: texts, label levels and source ids; with_dae adds the denoising inputs of the
    same texts."""
    texts = contrastive_texts(noise, examples)
    batch = {**tokenize(texts), "levels": torch.tensor([e.levels for e in examples]), "sources": source_ids(examples)}
    if with_dae:
        batch.update(_dae_part(tokenize, noise, examples, texts))
    return batch


def pair_batch(
    tokenize: Tokenize, noise: Noise, first: list[Example], second: list[Example], with_dae: bool
) -> dict[str, torch.Tensor]:
    """The paper's pair batch: rows 0..B-1 are the pairs' first texts, rows B..2B-1 their partners."""
    a_texts = contrastive_texts(noise, first)
    # one padded tensor of 2 x batch rows (the a texts, then the b texts): one forward pass embeds both
    batch = {
        **tokenize(a_texts + contrastive_texts(noise, second)),
        "levels": torch.tensor([e.levels for e in first + second]),
        "sources": source_ids(first + second),
    }
    if with_dae:
        batch.update(_dae_part(tokenize, noise, first, a_texts))
    return batch


def _dae_part(tokenize: Tokenize, noise: Noise, examples: list[Example], clean: list[str]) -> dict[str, torch.Tensor]:
    noisy = [noise.dae(t, e.id, e.epoch, e.copy) for t, e in zip(clean, examples)]
    return {**_prefixed("dae_", tokenize(noisy)), **dae_targets(tokenize, clean)}


class FtCollate:
    """Classification batches: texts and class ids."""

    def __init__(self, tokenize: Tokenize, source: TextSource):
        self.tokenize, self.source = tokenize, source

    def __call__(self, items: list[int]) -> dict[str, torch.Tensor]:
        s = self.source
        return ft_batch(
            self.tokenize, [Example(s.texts[i], s.levels[i] if s.levels else None, s.ids[i]) for i in items]
        )


class DaeCollate:
    """Denoising batches: the noisy text for the encoder, the clean text for the decoder."""

    def __init__(self, tokenize: Tokenize, source: TextSource, noise: Noise, epoch: int):
        self.tokenize, self.source, self.noise, self.epoch = tokenize, source, noise, epoch

    def __call__(self, items: list[int]) -> dict[str, torch.Tensor]:
        s = self.source
        return dae_batch(self.tokenize, self.noise, [Example(s.texts[i], None, s.ids[i], 0, self.epoch) for i in items])


class ClCollate:
    """In-batch contrastive batches over the corrected set: texts (extra copies lightly noised) and label levels.

    With `with_dae`, also the denoising inputs of the same texts (the joint phase).
    """

    def __init__(
        self,
        tokenize: Tokenize,
        source: TextSource,
        entries: list[Entry],
        noise: Noise,
        epoch: int,
        with_dae: bool = False,
    ):
        self.tokenize, self.source, self.entries, self.noise, self.epoch = tokenize, source, entries, noise, epoch
        self.with_dae = with_dae

    def examples(self, items: list[int]) -> list[Example]:
        s = self.source
        out = []
        for item in items:
            e = self.entries[item]
            out.append(Example(s.texts[e.index], s.levels[e.index], s.ids[e.index], e.copy, self.epoch))
        return out

    def __call__(self, items: list[int]) -> dict[str, torch.Tensor]:
        return cl_batch(self.tokenize, self.noise, self.examples(items), self.with_dae)


class PairCollate:
    """The paper's pair batches (pair_batch) over pairs of corrected-set entries."""

    def __init__(self, inner: ClCollate, pairs: list[tuple[int, int]]):
        self.inner, self.pairs = inner, pairs

    def __call__(self, items: list[int]) -> dict[str, torch.Tensor]:
        first = self.inner.examples([self.pairs[i][0] for i in items])
        second = self.inner.examples([self.pairs[i][1] for i in items])
        return pair_batch(self.inner.tokenize, self.inner.noise, first, second, self.inner.with_dae)


class Items(torch.utils.data.Dataset):
    """A dataset whose item x is x itself: what the sampler yields (an index, a stream's micro-batch) is collated."""

    def __getitem__(self, i: Any) -> Any:
        return i

    def __len__(self) -> int:  # never consulted: batches come from the batch sampler
        return 0


def make_loader(batches: Iterable[list[int]], collate: Callable, num_workers: int) -> DataLoader:
    """A DataLoader over precomputed micro-batches of item indices."""
    return DataLoader(
        Items(),
        batch_sampler=list(batches),
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        worker_init_fn=ignore_in_worker,
        # its own generator: a loader draws its workers' seed when iterated, which from the global RNG would shift
        # the dropout stream of a resumed run (it opens a loader mid-epoch) against the uninterrupted one
        generator=torch.Generator(),
    )
