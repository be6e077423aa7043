"""Labels (data/sources.py): a string or a whole number; one kind per source, so that 1 and "1" never become two
classes with one name and a file of half ids, half names never doubles the classes; anything else is an error
naming the file and line, in memory and in a stream alike."""

from __future__ import annotations

import json

import pytest

from dcl_dist.config import load_config
from dcl_dist.data.splits import load_splits, read_rows
from dcl_dist.errors import ConfigError, DataError


def jsonl(path, labels, field="label", **extra):
    path.write_text("".join(json.dumps({"text": f"text {i}", field: v, **extra}) + "\n" for i, v in enumerate(labels)))
    return path


BAD_LABELS = {
    "a list": (["a", "b"], "label field 'label' holds a list"),
    "an object": ({"name": "a"}, "label field 'label' holds an object"),
    "a fraction": (1.5, "label field 'label' holds 1.5, a fraction"),
    "a boolean": (True, "label field 'label' holds true/false"),
    "null": (None, "empty label"),
    "an empty string": ("  ", "empty label"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_a_label_that_is_not_a_string_or_a_whole_number_names_its_line(tmp_path, case):
    value, expected = BAD_LABELS[case]
    path = jsonl(tmp_path / "t.jsonl", ["a", "b", value])
    with pytest.raises(DataError, match=f"^{path}:3: .*{expected}"):
        read_rows(str(path), "train", "text", ["label"], "skip")


MIXED = {
    "1 and '1'": ([1, 0, "1"], ":3: label '1' is a string, but {path}:1 has 1, a whole number"),
    "ids and names": (["neg", "pos", 0, 1], ":3: label 0 is a whole number, but {path}:1 has 'neg', a string"),
}


@pytest.mark.parametrize("case", list(MIXED))
def test_a_file_that_mixes_kinds_of_labels_is_refused_naming_both_lines(tmp_path, case):
    labels, expected = MIXED[case]
    path = jsonl(tmp_path / "t.jsonl", labels)
    with pytest.raises(DataError) as e:
        read_rows(str(path), "train", "text", ["label"], "skip")
    assert str(e.value).startswith(str(path)) and expected.format(path=path) in str(e.value)
    assert "two classes with one name" in str(e.value)


def test_hierarchy_fields_follow_the_same_rules(tmp_path):
    path = tmp_path / "h.jsonl"
    rows = [{"text": "a", "label": "x", "coarse": 1}, {"text": "b", "label": "y", "coarse": [1]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"{path}:2: label field 'coarse' holds a list"):
        read_rows(str(path), "train", "text", ["label", "coarse"], "skip")


def test_whole_floats_are_their_integers_and_labels_match_across_files_by_their_text(tmp_path, tiny_model):
    """1.0 in a jsonl file is class 1; a csv file (text only) says "1" and means the same class."""
    train = jsonl(tmp_path / "train.jsonl", [0.0, 1.0, 0, 1, 2, 2, 0, 1])
    test = tmp_path / "test.csv"
    test.write_text("text,label\nsome text,1\nother text,2\n")
    cfg = load_config(
        None,
        [f"data.train={train}", f"data.validation={train}", f"data.test={test}", f"model.name_or_path={tiny_model}"],
    )
    splits = load_splits(cfg)
    assert splits.class_names == ["0", "1", "2"]
    assert splits.test.labels == [1, 2]


def test_a_stream_that_mixes_kinds_is_refused(tmp_path, tiny_model):
    from dcl_dist import dist

    # ids and names: Hugging Face's reader keeps both kinds (it reads 1 and "1" in one column as 1: one class)
    train = jsonl(tmp_path / "train.jsonl", ["neg", "pos", "neg", 0, "pos", 1])
    validation = jsonl(tmp_path / "validation.jsonl", ["neg", "pos"])
    cfg = load_config(
        None,
        [
            f"run.dir={tmp_path / 'run'}",
            f"data.train={train}",
            f"data.validation={validation}",
            "data.streaming=true",
            f"model.name_or_path={tiny_model}",
        ],
    )
    dist.init()
    with pytest.raises(DataError, match="the labels of 'label' mix whole numbers \\(0\\) and strings \\('neg'\\)"):
        load_splits(cfg)


def test_the_stream_itself_refuses_a_mix_where_class_counts_skip_the_count(tmp_path):
    from dcl_dist import dist
    from dcl_dist.data.streaming.rank_stream import RankStream

    train = jsonl(tmp_path / "train.jsonl", ["neg", "pos", 0])
    cfg = load_config(None, [f"data.train={train}", "data.streaming=true", "data.validation=v.jsonl"], preflight=False)
    dist.init()
    stream = RankStream(cfg, [str(train)], ["label"], [["0", "neg", "pos"]], micro=8)
    with pytest.raises(DataError, match=f"{train} \\(record 3 of rank 0's share.*label 0 is a whole number, but"):
        stream.next_micro_batch()


@pytest.mark.parametrize("counts", ["{1: 5, '1': 3}", "{0: 5, spam: 3}"])
def test_class_counts_of_mixed_kinds_are_refused(counts):
    with pytest.raises(ConfigError, match="'data.class_counts' mixes whole numbers and strings"):
        load_config(
            None,
            ["data.train=any/hub", "data.streaming=true", "data.validation=any/hub", f"data.class_counts={counts}"],
        )
