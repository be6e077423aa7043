from dcl_dist.data.batching import Noise
from dcl_dist.data.noise import delete_stop_words, delete_words, keyed_rng


def test_keyed_rng_depends_only_on_the_key():
    assert keyed_rng(1, 2, 3).random() == keyed_rng(1, 2, 3).random()
    assert keyed_rng(1, 2, 3).random() != keyed_rng(1, 2, 4).random()


def test_deletion_keeps_at_least_one_word_and_follows_the_ratio():
    text = " ".join(f"w{i}" for i in range(20))
    kept = [len(delete_words(text, 0.6, keyed_rng(0, i)).split()) for i in range(2000)]
    assert min(kept) >= 1
    assert abs(sum(kept) / len(kept) / 20 - 0.4) < 0.02
    assert delete_words("single", 0.99, keyed_rng(0)) == "single"
    assert delete_words(text, 0.0, keyed_rng(0)) == text


def test_deletion_only_removes_words_in_order():
    text = "a b c d e f g h"
    noisy = delete_words(text, 0.5, keyed_rng(3)).split()
    it = iter(text.split())
    assert all(w in it for w in noisy)


def test_stop_word_noise():
    text = "i would like to book a table for the two of us at the place"
    outs = {delete_stop_words(text, 0.5, 6, keyed_rng(i)) for i in range(50)}
    assert len(outs) > 5
    for out in outs:
        removed = set(text.split()) - set(out.split())
        assert removed <= {"i", "would", "to", "a", "for", "the", "two", "of", "us", "at"}
        assert "book" in out and "table" in out and "place" in out
    assert delete_stop_words("to the of", 1.0, 6, keyed_rng(0)) == "to the of"  # too short: untouched
    assert delete_stop_words("to the of a an it", 1.0, 6, keyed_rng(0))  # never empty


def test_noise_is_reproducible_across_epochs_and_copies():
    noise = Noise(seed=5, deletion_ratio=0.5)
    text = "one two three four five six seven eight nine ten"
    assert noise.dae(text, 7, 0) == noise.dae(text, 7, 0)
    assert len({noise.dae(text, 7, e) for e in range(10)}) > 1  # a new corruption every epoch
    assert noise.copy(text, 7, 0, 3) == text  # originals are never noised
    assert noise.copy(text, 7, 2, 3) == noise.copy(text, 7, 2, 3)
