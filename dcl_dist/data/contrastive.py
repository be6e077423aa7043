"""Phase cl's data (also the joint phase's): the imbalance-corrected set, and each epoch's items and collator
(corrected-set entries in in_batch mode, pairs of them in pair mode)."""

from __future__ import annotations

from dcl_dist.config import Config
from dcl_dist.data.balance import Entry, class_ratios, corrected_entries, corrected_sizes, make_pairs
from dcl_dist.data.batching import (
    ClCollate,
    Noise,
    PairCollate,
    TextSource,
    Tokenize,
    class_aware_order,
    epoch_order,
    length_grouped,
)
from dcl_dist.data.splits import TextSet, class_counts
from dcl_dist.seeds import epoch_rng


def correction_ratios(cfg: Config, counts: list[int]) -> tuple[list[float], dict]:
    """Each class's oversampling ratio from its size, and a record of the correction (counts before / after)."""
    bounds = cfg.imbalance_ratios()
    ratios = class_ratios(counts, *bounds) if bounds is not None else [1.0] * len(counts)
    record = {
        "imbalance": cfg.cl.imbalance,
        "min_ratio": bounds[0] if bounds else None,
        "max_ratio": bounds[1] if bounds else None,
        "counts": counts,
        "ratios": ratios,
        "corrected_counts": corrected_sizes(counts, ratios),
    }
    return ratios, record


def correction(cfg: Config, train: TextSet, n_classes: int) -> tuple[list[Entry], dict]:
    """The imbalance-corrected set and a record of the correction (counts before / after, ratios)."""
    ratios, record = correction_ratios(cfg, class_counts(train.levels, n_classes))
    return corrected_entries(train.labels, ratios, cfg.run.seed), record


class ContrastiveBatches:
    """Each epoch's contrastive items and collator; with_dae adds the denoising inputs (joint phase)."""

    def __init__(
        self,
        cfg: Config,
        train: TextSet,
        entries: list[Entry],
        tokenize: Tokenize,
        global_batch: int,
        with_dae: bool = False,
    ):
        self.cfg, self.entries, self.tokenize, self.with_dae = cfg, entries, tokenize, with_dae
        self.global_batch = global_batch
        self.lengths = tokenize.lengths(train.texts) if cfg.data.group_by_length else []
        self.source = TextSource(train.texts, train.levels, train.ids)
        self.noise = Noise(cfg.run.seed, cfg.dae.deletion_ratio, cfg.cl.copy_stopword_deletion, cfg.cl.copy_min_words)
        self.n_items = len(entries)

    def collate_and_order(self, epoch: int):
        """(collator, item order) of an epoch; both depend only on (seed, epoch)."""
        inner = ClCollate(self.tokenize, self.source, self.entries, self.noise, epoch, self.with_dae)
        seed = self.cfg.run.seed
        if self.cfg.cl.mode == "pair":
            pairs = make_pairs([e.index for e in self.entries], epoch_rng(seed, epoch))
            order = list(range(len(pairs)))
            if self.cfg.data.group_by_length:
                # a pair's loss does not depend on its batch mates: grouping pairs by length changes nothing else
                lengths = [
                    max(self.lengths[self.entries[a].index], self.lengths[self.entries[b].index]) for a, b in pairs
                ]
                order = length_grouped(order, lengths, self.global_batch, seed, epoch)
            return PairCollate(inner, pairs), order
        if self.cfg.cl.batching == "class_aware":
            labels = [self.source.levels[e.index][0] for e in self.entries]
            return inner, class_aware_order(labels, self.cfg.cl.examples_per_class, seed, epoch)
        return inner, epoch_order(len(self.entries), seed, epoch)
