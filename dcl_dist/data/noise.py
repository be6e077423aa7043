"""Text noise, keyed on (seed, sample id, epoch, ...) so that a resumed run corrupts the same texts the same way."""

from __future__ import annotations

import hashlib
import random
import struct

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

STOP_WORDS = frozenset(ENGLISH_STOP_WORDS)
"""scikit-learn's English stop-word list (318 words): shipped with a dependency, so nothing is downloaded."""


def keyed_int(*key: int) -> int:
    """A 64-bit integer that depends only on the integers in key (the same in every process and run)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(key)}q", *key), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def keyed_rng(*key: int) -> random.Random:
    """A random generator that depends only on the integers in key (the same in every process and run)."""
    return random.Random(keyed_int(*key))


def keyed_uniform(*key: int) -> float:
    """A number in [0, 1) that depends only on key: one draw, 6x cheaper than keyed_rng(*key).random()."""
    return (keyed_int(*key) >> 11) / float(1 << 53)


def text_id(text: str) -> int:
    """A stable id (0 <= id < 2**63) from a text's content: a stream's noise key, the same on any rank or sharding."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def delete_words(text: str, ratio: float, rng: random.Random) -> str:
    """TSDAE noise: drop each whitespace-separated word with probability `ratio`, keeping at least one."""
    words = text.split()
    if not words or ratio <= 0:
        return text
    kept = [w for w in words if rng.random() >= ratio]
    if not kept:
        kept = [words[rng.randrange(len(words))]]
    return " ".join(kept)


def _is_stop_word(word: str) -> bool:
    return word.lower().strip(".,;:!?\"'()[]{}") in STOP_WORDS


def delete_stop_words(text: str, ratio: float, min_words: int, rng: random.Random) -> str:
    """Light noise for the imbalance correction's extra copies: drop each stop word with probability `ratio`.

    Texts shorter than `min_words` words are returned unchanged; the result is never empty.
    """
    words = text.split()
    if len(words) < min_words:
        return text
    kept = [w for w in words if not (_is_stop_word(w) and rng.random() < ratio)]
    return " ".join(kept) if kept else text
