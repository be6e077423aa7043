"""Texts longer than max_length are truncated, counted, and the count is logged once per phase."""

import logging

from transformers import AutoTokenizer

from dcl_dist.data.batching import Tokenize
from dcl_dist.phases.outputs import truncation_note


def test_long_texts_are_truncated_and_counted(tiny_model, caplog):
    tokenize = Tokenize(AutoTokenizer.from_pretrained(str(tiny_model)), 8)
    batch = tokenize(["short text", "a much longer text that has many more words than eight tokens can hold", "ok"])
    assert batch["input_ids"].shape == (3, 8)
    tokenize(["another sentence of well over eight tokens, which is cut to fit"])
    assert tokenize.truncated == 2
    with caplog.at_level(logging.WARNING):
        truncation_note(tokenize, "ft")
    assert "ft: 2 texts were longer than max_length 8 tokens and were truncated" in caplog.text
