import gzip
import json

import pytest

from dcl_dist.config import load_config
from dcl_dist.data.sources import read_source
from dcl_dist.data.splits import load_splits, stratified_holdout, stratified_subset
from dcl_dist.errors import DataError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(n_per_class, labels=("a", "b", "c")):
    return [{"text": f"text {label} {i}", "label": label} for label in labels for i in range(n_per_class)]


def test_jsonl_csv_parquet_and_gzip_read_the_same(tmp_path):
    data = rows(3)
    write_jsonl(tmp_path / "d.jsonl", data)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in data))
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in data))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(data), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.jsonl.gz", "d.csv", "d.parquet"):
        got = [r.fields for r in read_source(str(tmp_path / name), "train")]
        assert got == data, name


def test_glob_reads_every_file(tmp_path):
    write_jsonl(tmp_path / "part-0.jsonl", rows(2))
    write_jsonl(tmp_path / "part-1.jsonl", rows(3))
    assert len(list(read_source(str(tmp_path / "part-*.jsonl"), "train"))) == 15


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "broken", "label": \n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        list(read_source(str(path), "train"))


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "a"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: bytes that are not UTF-8"):
        list(read_source(str(path), "train"))


def test_malformed_csv_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('text,label\nfine,a\n"unclosed,a\nx,b\n')
    with pytest.raises(DataError, match=rf"{path}:\d+"):
        list(read_source(str(path), "train"))


def config_for(tmp_path, **data):
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    return load_config(None, [f"run.dir={tmp_path / 'run'}", *overrides])


def test_missing_field_lists_the_fields_found(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"sentence": "x", "label": "a"}])
    with pytest.raises(DataError, match="no field 'text' \\(fields found: sentence, label\\): set data.text_field"):
        load_splits(config_for(tmp_path, train=tmp_path / "t.jsonl"))


def test_label_map_from_train_and_unknown_labels_named(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(10))
    write_jsonl(tmp_path / "test.jsonl", rows(2, ("a", "z")))
    with pytest.raises(DataError, match="labels that train never has: 'z' \\(2\\)"):
        load_splits(config_for(tmp_path, train=tmp_path / "train.jsonl", test=tmp_path / "test.jsonl"))


def test_validation_is_a_stratified_share_of_train(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(10, ("a", "b")) + rows(5, ("c",)))
    splits = load_splits(config_for(tmp_path, train=tmp_path / "train.jsonl"))
    assert splits.class_names == ["a", "b", "c"]
    assert splits.validation_from_train
    assert sorted(splits.validation.labels) == [0, 0, 1, 1, 2]
    assert len(splits.train) == 20
    assert not set(splits.train.texts) & set(splits.validation.texts)
    again = load_splits(config_for(tmp_path, train=tmp_path / "train.jsonl"))
    assert again.validation.texts == splits.validation.texts  # fixed seed


def test_holdout_keeps_one_example_classes_in_train():
    keep, held = stratified_holdout([(0,)] * 10 + [(1,)], 0.2, seed=0)
    assert 10 in keep and len(held) == 2


def test_subset_is_stratified():
    levels = [(0,)] * 90 + [(1,)] * 9 + [(2,)]
    chosen = stratified_subset(levels, 20, seed=0)
    assert len(chosen) == 20
    counts = [sum(levels[i][0] == c for i in chosen) for c in range(3)]
    assert counts[0] >= 17 and counts[1] >= 1 and counts[2] == 1


def test_empty_texts_skipped_or_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(5) + [{"text": "   ", "label": "a"}])
    splits = load_splits(config_for(tmp_path, train=tmp_path / "train.jsonl"))
    assert splits.skipped_empty == 1
    with pytest.raises(DataError, match=r"train.jsonl:16: empty text"):
        load_splits(config_for(tmp_path, train=tmp_path / "train.jsonl", empty_text="error"))


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_splits(config_for(tmp_path, train=tmp_path / "train.jsonl"))


def test_integer_labels_sort_numerically(tmp_path):
    data = [{"text": f"t{i}", "label": i % 11} for i in range(44)]
    write_jsonl(tmp_path / "train.jsonl", data)
    splits = load_splits(config_for(tmp_path, train=tmp_path / "train.jsonl"))
    assert splits.class_names == [str(i) for i in range(11)]
