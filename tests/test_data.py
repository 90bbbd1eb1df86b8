"""Tests of the data layer: tokenizers, BBC News, ListOps, files, hub errors, splits, caching."""

from __future__ import annotations

import json
import random
import statistics
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attention_arena.data import (
    ByteTokenizer,
    DataError,
    DataWarning,
    ListOpsTokenizer,
    PadCollate,
    TextClassificationDataModule,
    available_datasets,
    evaluate_listops,
    hub,
    load_text_splits,
    make_source,
    pipeline,
)
from attention_arena.data.bbc_news import load_bbc_news
from attention_arena.data.listops import generate_listops
from attention_arena.data.pipeline import SplitSpec
from attention_arena.data.processing import (
    RawData,
    deduplicate,
    finalize_splits,
    shrink_sizes,
    stratified_split,
)

# 98 exact copies (after stripping) and 3 that differ only in case or whitespace.
BBC_RAW, BBC_EXACT_UNIQUE, BBC_UNIQUE = 2225, 2127, 2124
BBC_TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    """Every test gets its own cache dir, so nothing lands in ~/.cache/attention_arena."""
    monkeypatch.setenv("ATTENTION_ARENA_CACHE", str(tmp_path / "arena_cache"))


@pytest.fixture(scope="module")
def bbc_splits():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ts = load_text_splits(make_source("bbc_news"), SplitSpec(0, 0.1, 0.1))
    return ts.splits, ts.class_names, ts.notes


def dm(**kwargs) -> TextClassificationDataModule:
    return TextClassificationDataModule(**kwargs)


# --- tokenizers ---------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip_cls_and_truncation():
    tok = ByteTokenizer()
    text = "Héllo, wörld €"
    ids = tok.encode(text)
    assert ids[0] == tok.cls_id == 1 and tok.pad_id == 0 and tok.vocab_size == 258
    assert ids[1:] == [b + 2 for b in text.encode("utf-8")]
    assert len(ids) == len(text.encode("utf-8")) + 1 == tok.num_tokens(text)
    assert tok.decode(ids) == text
    assert tok.encode(text, max_length=5) == ids[:5]
    assert tok.encode("", max_length=1) == [1]
    assert max(tok.encode(bytes(range(128, 256)).decode("latin-1"))) <= 257
    with pytest.raises(DataError, match="max_length must be a positive"):
        tok.encode(text, max_length=0)


def test_listops_tokenizer():
    tok = ListOpsTokenizer()
    ids = tok.encode("[MAX 2 9 [MIN 4 7 ] 0 ]")
    assert ids[0] == 1 and len(ids) == 10 and tok.vocab_size == 17
    assert tok.decode(ids) == "[MAX 2 9 [MIN 4 7 ] 0 ]"
    assert tok.encode("( ( [SM 1 ) 2 ) ]") == tok.encode("[SM 1 2 ]")  # LRA's grouping tokens
    assert tok.encode("[SM 1 2 ]", max_length=3) == ids[:1] + tok.encode("[SM 1")[1:]
    with pytest.raises(DataError, match="unknown ListOps token 'x'"):
        tok.encode("[SM x ]")


def test_collate_shapes_mask_and_multiple():
    items = [(np.array([1, 5, 6], dtype=np.uint16), 2), (np.array([1, 7], dtype=np.uint16), 0)]
    batch = PadCollate(pad_id=0, pad_to_multiple_of=4)(items)
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2, 4)
    assert batch["padding_mask"].dtype == torch.bool
    assert batch["input_ids"].tolist() == [[1, 5, 6, 0], [1, 7, 0, 0]]
    assert batch["padding_mask"].tolist() == [
        [False, False, False, True],
        [False, False, True, True],
    ]
    assert batch["labels"].tolist() == [2, 0]
    assert PadCollate()(items)["input_ids"].shape == (2, 3)


# --- BBC News ----------------------------------------------------------------------------------


def test_bbc_counts_and_dedup():
    with pytest.warns(DataWarning, match="1 of 2225 documents contain bytes that are not valid"):
        raw = load_bbc_news()
    texts, labels = raw.splits["train"]
    assert len(texts) == BBC_RAW and raw.class_names == BBC_TOPICS
    assert len({t.strip() for t in texts}) == BBC_EXACT_UNIQUE
    assert len({" ".join(t.casefold().split()) for t in texts}) == BBC_UNIQUE
    deduped = deduplicate(raw, "BBC News", warn=False)
    assert len(deduped.splits["train"][0]) == BBC_UNIQUE
    assert any(
        "dropped 101 duplicate documents (98 exact copies after stripping, 3 differing only in "
        "case or whitespace" in n
        for n in deduped.notes
    )


def test_bbc_splits_disjoint_and_stratified(bbc_splits):
    splits, names, _ = bbc_splits
    assert names == BBC_TOPICS
    sizes = {s: len(t) for s, (t, _) in splits.items()}
    assert sizes == {"train": 1700, "val": 212, "test": 212}
    sets = {s: set(t) for s, (t, _) in splits.items()}
    assert sum(len(v) for v in sets.values()) == BBC_UNIQUE
    assert not (
        sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"]
    )
    everything = Counter(y for _, labels in splits.values() for y in labels)
    for _, labels in splits.values():
        counts = Counter(labels)
        for c in range(5):
            assert abs(counts[c] / len(labels) - everything[c] / BBC_UNIQUE) < 0.01


def test_splits_deterministic_order_independent_and_seeded(bbc_splits):
    splits, names, _ = bbc_splits
    texts = [t for s in splits.values() for t in s[0]]
    labels = [y for s in splits.values() for y in s[1]]
    fr = {"test": 0.1, "val": 0.1}
    a = stratified_split(texts, labels, fr, seed=0)
    order = list(range(len(texts)))
    random.Random(1).shuffle(order)
    b = stratified_split([texts[i] for i in order], [labels[i] for i in order], fr, seed=0)
    for part in a:
        assert [texts[i] for i in a[part]] == [texts[order[i]] for i in b[part]]
    c = stratified_split(texts, labels, fr, seed=1)
    assert set(a["val"]) != set(c["val"]) and set(a["test"]) != set(c["test"])
    with pytest.warns(DataWarning):
        again = load_text_splits(make_source("bbc_news"), SplitSpec(seed=0)).splits
    assert again == splits


def test_datamodule_bbc_batches_and_attributes(tmp_path):
    m = dm(
        max_length=512,
        batch_size=8,
        limit_examples=200,
        pad_to_multiple_of=64,
        tokenizer="bytes",
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.warns(DataWarning, match="not valid UTF-8"):
        assert m.num_classes == 5 and m.vocab_size == 258 and m.pad_id == 0
    assert m.class_names == BBC_TOPICS
    sizes = m.split_sizes
    assert sizes == {"train": 160, "val": 20, "test": 20}
    m.prepare_data()
    m.setup("fit")  # idempotent
    batch = next(iter(m.train_dataloader()))
    n = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == (8, n) and n % 64 == 0 and n <= 512
    assert batch["padding_mask"].shape == (8, n) and batch["labels"].shape == (8,)
    assert (batch["input_ids"][:, 0] == 1).all()
    assert (batch["input_ids"][batch["padding_mask"]] == 0).all()
    assert not batch["padding_mask"][:, 0].any()
    # Seeded shuffling: same seed, same first batch; val is not shuffled.
    again = next(iter(m.train_dataloader()))
    assert torch.equal(batch["input_ids"], again["input_ids"])
    val = [b["labels"] for b in m.val_dataloader()]
    assert torch.cat(val).tolist() == m.splits["val"].labels.tolist()
    # No text in two splits (hashes of the source texts), full data.
    full = dm(max_length=64, tokenizer="bytes", cache_dir=str(tmp_path / "c"))
    with pytest.warns(DataWarning):
        full.setup()
    h = {s: set(full.splits[s].hashes.tolist()) for s in ("train", "val", "test")}
    assert sum(map(len, h.values())) == BBC_UNIQUE
    assert not (h["train"] & h["val"] or h["train"] & h["test"] or h["val"] & h["test"])
    assert np.diff(full.splits["train"].offsets).max() == 64  # truncated
    assert full.splits["train"].lengths.max() > 64  # the untruncated counts


# --- ListOps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[SM 5 6 7 ]", 8),
        ("[MED 1 2 3 4 ]", 2),
        ("[MED 5 2 4 3 ]", 3),
        ("[MED 9 0 ]", 4),
        ("[MED 3 [MAX 1 8 ] 5 ]", 5),
        ("[MIN [SM 9 9 ] [MED 7 1 ] 6 ]", 4),
        ("7", 7),
    ],
)
def test_listops_hand_checked(expr, value):
    assert evaluate_listops(expr) == value


def _reference_value(tokens: list[str]) -> int:
    """Recursive evaluator, independent of evaluate_listops (which uses a stack)."""
    it = iter(tokens)

    def node(tok: str) -> int:
        if not tok.startswith("["):
            return int(tok)
        args = []
        for nxt in it:
            if nxt == "]":
                return _apply(tok, args)
            args.append(node(nxt))
        raise AssertionError("unbalanced expression")

    return node(next(it))


def _apply(op, args):
    return {
        "[MIN": min,
        "[MAX": max,
        "[SM": lambda a: sum(a) % 10,
        "[MED": lambda a: int(statistics.median(a)),
    }[op](args)


def test_listops_generator_deterministic_bounded_and_correct():
    a = generate_listops(60, 10, 10, min_length=20, max_length=120, seed=3)
    b = generate_listops(60, 10, 10, min_length=20, max_length=120, seed=3)
    c = generate_listops(60, 10, 10, min_length=20, max_length=120, seed=4)
    assert a.splits == b.splits and a.splits != c.splits
    assert a.class_names == [str(i) for i in range(10)]
    all_texts = [t for texts, _ in a.splits.values() for t in texts]
    assert len(all_texts) == len(set(all_texts)) == 80
    for texts, labels in a.splits.values():
        for text, label in zip(texts, labels, strict=True):
            assert 20 < len(text.split()) < 120
            assert label == evaluate_listops(text) == _reference_value(text.split())


def test_listops_bounds_errors():
    with pytest.raises(DataError, match="min_length < tokens < max_length, which is empty"):
        generate_listops(10, 1, 1, min_length=50, max_length=51)
    with pytest.raises(DataError, match="after 50 draws.*widen"):
        generate_listops(10, 1, 1, min_length=1000, max_length=1100, max_attempts=50)


def test_listops_datamodule(tmp_path):
    listops = dict(name="listops", listops_min_length=10, listops_max_length=60,
                   listops_num_train=40, listops_num_val=8, listops_num_test=8)
    m = dm(**listops, max_length=64, batch_size=4)
    assert m.num_classes == 10 and m.vocab_size == 17
    assert m.split_sizes == {"train": 40, "val": 8, "test": 8}
    batch = next(iter(m.test_dataloader()))
    assert batch["input_ids"].max() < 17 and (batch["input_ids"][:, 0] == 1).all()
    short = dm(**listops, max_length=20)
    with pytest.warns(DataWarning, match="truncated.*raise data.max_length"):
        short.setup()
    small = dm(name="listops", listops_min_length=10, listops_max_length=60, limit_examples=20)
    assert small.split_sizes == {"train": 16, "val": 2, "test": 2}  # 5000/500/500 scaled


# --- files -------------------------------------------------------------------------------------

ROWS = [
    ("the cat sat on the mat", "animal"),
    ("dogs bark at night", "animal"),
    ("a horse in a field", "animal"),
    ("birds sing in trees", "animal"),
    ("stocks fell sharply today", "finance"),
    ("the bank raised rates", "finance"),
    ("bond yields climbed", "finance"),
    ("markets rallied on news", "finance"),
    ("the team won the cup", "sport"),
    ("a late goal decided it", "sport"),
    ("the runner broke a record", "sport"),
    ("rain stopped play", "sport"),
]


def write(path: Path, rows=ROWS, text="text", label="label", fmt=None) -> Path:
    df = pd.DataFrame({text: [r[0] for r in rows], label: [r[1] for r in rows]})
    fmt = fmt or path.suffix
    if fmt == ".csv":
        df.to_csv(path, index=False)
    elif fmt == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif fmt == ".json":
        path.write_text(json.dumps(df.to_dict(orient="records")))
    elif fmt == ".parquet":
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_files_formats_string_labels(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}")
    m = dm(
        name="files",
        path=str(path),
        max_length=32,
        batch_size=4,
        val_fraction=0.25,
        test_fraction=0.25,
    )
    assert m.class_names == ["animal", "finance", "sport"] and m.num_classes == 3
    assert m.split_sizes == {"train": 6, "val": 3, "test": 3}
    for split in ("val", "test"):
        assert sorted(m.splits[split].labels.tolist()) == [0, 1, 2]
    batch = next(iter(m.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4


def test_files_int_labels_and_separate_val_test(tmp_path):
    ids = {"animal": 0, "finance": 1, "sport": 2}
    rows = [(t, ids[y]) for t, y in ROWS]
    train = write(tmp_path / "train.parquet", rows[:3] + rows[4:7] + rows[8:11])
    val = write(tmp_path / "val.jsonl", [rows[3], rows[7]])
    test = write(tmp_path / "test.csv", [rows[11]])
    m = dm(name="files", path=str(train), val_path=str(val), test_path=str(test), num_classes=4)
    assert m.num_classes == 4 and m.class_names == ["0", "1", "2", "3"]
    assert m.split_sizes == {"train": 9, "val": 2, "test": 1}
    assert m.splits["val"].labels.tolist() == [0, 1] and m.splits["test"].labels.tolist() == [2]


def test_files_custom_columns_and_duplicates_warn(tmp_path):
    rows = ROWS + [(ROWS[0][0] + "  ", "animal"), (ROWS[5][0], "finance")]
    train = write(tmp_path / "t.csv", rows, text="body", label="topic")
    test = write(tmp_path / "test.csv", [ROWS[8]], text="body", label="topic")
    with pytest.warns(DataWarning, match="dropped 3 duplicate documents \\(3 exact"):
        m = dm(
            name="files",
            path=str(train),
            test_path=str(test),
            text_column="body",
            label_column="topic",
        )
        sizes = m.split_sizes
    assert sum(sizes.values()) == 12 and sizes["test"] == 1


# --- validation errors -------------------------------------------------------------------------


def test_error_unknown_name_and_bad_settings(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'nope'; valid names: arxiv, bbc_news"):
        dm(name="nope")
    assert available_datasets() == [
        "arxiv",
        "bbc_news",
        "files",
        "hyperpartisan",
        "imdb",
        "listops",
    ]
    with pytest.raises(DataError, match="max_length must be >= 1, got 0; fix"):
        dm(max_length=0)
    with pytest.raises(DataError, match="max_length must be >= 1, got -5"):
        dm(max_length=-5)
    with pytest.raises(DataError, match="val_fraction \\+ data.test_fraction must be < 1"):
        dm(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="data=files needs a file: set data.path"):
        dm(name="files").setup()
    for name in ("files", "imdb"):
        with pytest.raises(DataError, match="data.num_classes must be >= 2 or null, got 1"):
            dm(name=name, num_classes=1)


def test_error_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist; fix: check data.path"):
        dm(name="files", path=str(tmp_path / "nope.csv")).setup()
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="is empty \\(0 bytes\\)"):
        dm(name="files", path=str(tmp_path / "empty.csv")).setup()
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        dm(name="files", path=str(tmp_path / "header.csv")).setup()
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type '.xlsx'; fix: use one of .csv"):
        dm(name="files", path=str(tmp_path / "data.xlsx")).setup()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.csv", b'text,label\n"unterminated,1\nfoo,2\n'),
        ("bad.jsonl", b'{"text": "a", "label": \n garbage'),
        ("bad.parquet", b"this is not parquet"),
    ],
)
def test_error_unparseable(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    fmt = name.split(".")[1].replace("jsonl", "json").upper()
    with pytest.raises(DataError, match=f"is not valid {fmt} .*fix: check the file's content"):
        dm(name="files", path=str(tmp_path / name)).setup()


def test_error_missing_column_lists_columns(tmp_path):
    path = write(tmp_path / "d.csv", text="body", label="label")
    with pytest.raises(DataError, match=r"no column 'text'; columns present: \['body', 'label'\]"):
        dm(name="files", path=str(path)).setup()
    with pytest.raises(DataError, match="no column 'y'.*data.label_column"):
        dm(name="files", path=str(path), text_column="body", label_column="y").setup()


def test_error_empty_texts(tmp_path):
    rows = list(ROWS)
    rows[2] = ("", "animal")
    rows[5] = ("   ", "finance")
    path = write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="2 of 12 rows have an empty text.*rows 2, 5.*drop those"):
        dm(name="files", path=str(path)).setup()


def test_non_utf8_bytes_warn_with_count(tmp_path):
    path = tmp_path / "d.csv"
    write(path)
    data = path.read_bytes().replace(b"cat", b"c\xfft").replace(b"bank", b"b\xe9nk")
    path.write_bytes(data)
    with pytest.warns(
        DataWarning, match="2 of 12 documents contain bytes that are not valid UTF-8"
    ):
        m = dm(name="files", path=str(path), max_length=64, tokenizer="bytes")
        m.setup()
    texts = [ByteTokenizer().decode(m.splits[s].example(i)) for s in m.splits
             for i in range(len(m.splits[s]))]
    assert "the c\ufffdt sat on the mat" in texts
    with pytest.warns(DataWarning, match="2 of 12 documents"):  # repeated from the cache
        dm(name="files", path=str(path), max_length=64, tokenizer="bytes").setup()


def test_error_labels_out_of_range_and_negative(tmp_path):
    rows = [(t, i % 3) for i, (t, _) in enumerate(ROWS)]
    rows[4] = (rows[4][0], 7)
    path = write(tmp_path / "d.parquet", rows)
    with pytest.raises(
        DataError, match=r"1 labels .* outside 0..2 \(num_classes=3\): values \[7\]"
    ):
        dm(name="files", path=str(path), num_classes=3).setup()
    rows[4] = (rows[4][0], -1)
    write(tmp_path / "neg.parquet", rows)
    with pytest.raises(DataError, match=r"outside 0..2 \(labels >= 0\): values \[-1\] at rows 4"):
        dm(name="files", path=str(tmp_path / "neg.parquet")).setup()


def test_error_mixed_label_types(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n')
    with pytest.raises(DataError, match="mix types: 1 int .*1 str .*'pos'.*only class ids"):
        dm(name="files", path=str(path)).setup()
    rows = [(t, "pos" if i % 2 else str(i)) for i, (t, _) in enumerate(ROWS)]
    write(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match="mix types"):
        dm(name="files", path=str(tmp_path / "d.csv")).setup()
    write(tmp_path / "a.csv", [(t, 0) for t, _ in ROWS[:6]])
    write(tmp_path / "b.csv", [(t, "x") for t, _ in ROWS[6:]])
    with pytest.raises(DataError, match="mix types across files"):
        dm(name="files", path=str(tmp_path / "a.csv"), val_path=str(tmp_path / "b.csv")).setup()


def test_error_missing_labels_and_string_num_classes(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,pos\nworld,\nagain,neg\n")
    with pytest.raises(DataError, match="1 rows have no label.*rows 1"):
        dm(name="files", path=str(path)).setup()
    path = write(tmp_path / "s.csv")
    with pytest.raises(DataError, match="found 3 class names.*num_classes=5"):
        dm(name="files", path=str(path), num_classes=5).setup()


# --- hub ---------------------------------------------------------------------------------------


def test_hub_unreachable_raises_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'stanfordnlp/imdb' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for name in ("imdb", "hyperpartisan", "arxiv"):
        with pytest.raises(
            DataError,
            match=f"data={name} needs the Hugging Face hub, which is "
            "unreachable.*use data=files data.path=",
        ):
            dm(name=name).setup()


def test_hub_offline_mode_real_datasets(monkeypatch, tmp_path):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    with pytest.raises(
        DataError, match="data=imdb needs the Hugging Face hub.*OfflineModeIsEnabled"
    ):
        dm(name="imdb", hub_id="attention-arena-tests/no-such-dataset").setup()


def test_hub_loader_with_fake_hub(monkeypatch):
    import datasets

    label = datasets.ClassLabel(names=["neg", "pos"])
    feats = datasets.Features({"text": datasets.Value("string"), "label": label})

    def fake(hub_id, config=None, **kwargs):
        assert hub_id == "stanfordnlp/imdb"
        train = {
            "text": [f"review {i}" for i in range(40)] + ["shared"],
            "label": [i % 2 for i in range(41)],
        }
        test = {
            "text": [f"test {i}" for i in range(10)] + ["shared"],
            "label": [i % 2 for i in range(11)],
        }
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict(train, features=feats),
                "test": datasets.Dataset.from_dict(test, features=feats),
                "unsupervised": datasets.Dataset.from_dict({"text": ["u"], "label": [-1]}),
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(hub, "hub_revision", lambda hub_id, revision: None)
    with pytest.warns(DataWarning, match="dropped 1 duplicate"):
        m = dm(name="imdb", max_length=16)
        m.setup()
    assert m.class_names == ["neg", "pos"]
    assert m.split_sizes == {"train": 36, "val": 4, "test": 11}


# --- caching -----------------------------------------------------------------------------------


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    path = write(tmp_path / "d.csv")
    cache = tmp_path / "cache"

    def load(**kw):
        m = dm(name="files", path=str(path), cache_dir=str(cache), tokenizer="bytes", **kw)
        m.setup()
        return m

    first = load(max_length=8)
    assert first.data.path.exists() and np.diff(first.splits["train"].offsets).max() == 8
    built = []
    real_build = pipeline._build
    monkeypatch.setattr(pipeline, "_build", lambda *a, **k: built.append(a) or real_build(*a, **k))
    hit = load(max_length=8)
    assert not built and hit.data.path == first.data.path
    longer = load(max_length=64)  # max_length change -> rebuild
    assert len(built) == 1 and longer.data.path != first.data.path
    assert np.diff(longer.splits["train"].offsets).max() > 8
    write(path, [(t.upper(), y) for t, y in ROWS])  # same size, new content -> rebuild
    changed = load(max_length=64)
    assert len(built) == 2 and changed.data.path != longer.data.path
    text = ByteTokenizer().decode(changed.splits["train"].example(0))
    assert text == text.upper()
    other_seed = load(max_length=64, seed=1)
    assert len(built) == 3 and other_seed.data.path != changed.data.path


def test_finalize_carves_only_missing_splits():
    raw = RawData(
        {
            "train": ([f"t{i}" for i in range(20)], [i % 2 for i in range(20)]),
            "test": (["x", "y"], [0, 1]),
        },
        ["a", "b"],
    )
    out = finalize_splits(raw, 0.1, 0.1, seed=0)
    assert out["test"] == raw.splits["test"]
    assert len(out["val"][0]) == 2 and len(out["train"][0]) == 18


def test_an_empty_split_is_a_warning_that_says_the_fix():
    raw = RawData({"train": ([f"t{i}" for i in range(20)], [i % 2 for i in range(20)])},
                  ["a", "b"])
    with pytest.warns(DataWarning, match="the test split is empty.*nothing to be tested on.*"
                                         "raise data.test_fraction \\(now 0.01"):
        out = finalize_splits(raw, 0.1, 0.01, seed=0)  # 1% of 10 per class rounds to nothing
    assert (len(out["train"][0]), len(out["val"][0]), len(out["test"][0])) == (18, 2, 0)
    with pytest.warns(DataWarning, match="the val split is empty.*final weights are tested.*"
                                         "set data.val_fraction > 0"):
        out = finalize_splits(raw, 0.0, 0.1, seed=0)
    assert len(out["train"][0]) == 18 and len(out["test"][0]) == 2


def test_datamodule_pickles_for_ddp_spawn(tmp_path):
    import pickle

    dm = TextClassificationDataModule(max_length=64, limit_examples=20, cache_dir=str(tmp_path))
    dm.setup()
    clone = pickle.loads(pickle.dumps(dm))
    assert clone.num_classes == dm.num_classes == 5
    assert next(iter(clone.train_dataloader()))["input_ids"].shape[1] <= 64


def test_example_ids_and_split_texts_match_the_loaders(tmp_path):
    import hashlib

    m = dm(max_length=64, limit_examples=60, tokenizer="bytes", cache_dir=str(tmp_path))
    with pytest.warns(DataWarning):
        m.setup()
    for split in ("train", "val", "test"):
        texts, labels = m.split_texts(split)
        assert len(texts) == len(m.splits[split])
        assert m.example_ids(split) == [hashlib.sha1(t.encode()).hexdigest()[:16] for t in texts]
        assert labels == m.splits[split].labels.tolist()
        first = ByteTokenizer().encode(texts[0], 64)
        assert first == m.splits[split].ids[: m.splits[split].offsets[1]].tolist()
    loader = [b["labels"] for b in m.val_dataloader()]
    assert torch.cat(loader).tolist() == m.split_texts("val")[1]


# --- defects of issue #9 -------------------------------------------------------------------------


def test_hub_local_copy_edit_is_not_served_stale(tmp_path):
    """data.hub_id pointing at a local copy: the cache key holds the copy's content."""
    copy = tmp_path / "imdb_copy"
    copy.mkdir()
    write(copy / "train.csv", [(f"review number {i}", i % 2) for i in range(20)])
    write(copy / "test.csv", [(f"test review {i}", i % 2) for i in range(6)])

    def texts():
        m = dm(name="imdb", hub_id=str(copy), tokenizer="bytes", max_length=64)
        m.setup()
        return m.split_texts("train")[0] + m.split_texts("test")[0]

    assert "review number 3" in texts()
    write(copy / "train.csv", [(f"REVIEW NUMBER {i}", i % 2) for i in range(20)])  # same size
    assert "REVIEW NUMBER 3" in texts() and "review number 3" not in texts()


def test_hub_revision_is_part_of_the_cache_key(monkeypatch):
    import datasets

    loaded = []

    def fake(hub_id, config=None, revision=None, **kwargs):
        loaded.append(revision)
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict(
                {"text": [f"{revision[:3]} {split} {i}" for i in range(12)], "label": [0, 1] * 6}
            )
            for split in ("train", "test")
        })

    monkeypatch.setattr(datasets, "load_dataset", fake)
    sha = ["a" * 40]
    monkeypatch.setattr(hub, "hub_revision", lambda hub_id, revision: sha[0])

    def first_text():
        m = dm(name="imdb", tokenizer="bytes", max_length=32)
        return m.split_texts("train")[0][0]

    assert first_text().startswith("aaa") and loaded == ["a" * 40]
    assert first_text().startswith("aaa") and len(loaded) == 1  # cache hit
    sha[0] = "b" * 40  # the hub moved on
    assert first_text().startswith("bbb") and loaded == ["a" * 40, "b" * 40]


def test_dedup_merges_copies_differing_in_case_or_whitespace(tmp_path):
    train = ROWS + [
        ("The Cat sat on THE mat", "animal"),  # case only: the test copy is kept
        ("bond  yields\n climbed\t", "finance"),  # whitespace only: the val copy is kept
    ]
    with pytest.warns(DataWarning) as record:
        m = dm(
            name="files",
            path=str(write(tmp_path / "train.csv", train)),
            val_path=str(write(tmp_path / "val.csv", [("bond yields climbed", "finance")])),
            test_path=str(write(tmp_path / "test.csv", [("the cat sat on the mat", "animal")])),
            tokenizer="bytes",
        )
        m.setup()
    msg = [str(w.message) for w in record if "duplicate" in str(w.message)]
    # ROWS hold both texts exactly too: 2 exact copies, 2 near ones
    assert len(msg) == 1 and "dropped 4 duplicate documents (2 exact copies after stripping, " \
        "2 differing only in case or whitespace" in msg[0]
    assert m.split_texts("val")[0] == ["bond yields climbed"]
    assert m.split_texts("test")[0] == ["the cat sat on the mat"]
    keys = {" ".join(t.casefold().split()) for t in m.split_texts("train")[0]}
    assert not keys & {"bond yields climbed", "the cat sat on the mat"}
    assert len(m.split_texts("train")[0]) == len(ROWS) - 2


def test_note_counts_inputs_identical_to_train_after_truncation(tmp_path):
    rows = [(f"shared opening words, then story {i}", "x" if i % 2 else "y") for i in range(6)]
    m = dm(
        name="files",
        path=str(write(tmp_path / "train.csv", rows[:4])),
        val_path=str(write(tmp_path / "val.csv", rows[4:5])),
        test_path=str(write(tmp_path / "test.csv", rows[5:])),
        tokenizer="bytes",
        max_length=12,
    )
    assert any("1 of 1 val and 1 of 1 test inputs are identical to a training input" in n
               for n in m.notes)
    longer = dm(name="files", path=m.source.path, val_path=m.source.val_path,
                test_path=m.source.test_path, tokenizer="bytes", max_length=64)
    assert not any("identical to a training input" in n for n in longer.notes)


def test_class_only_in_val_or_test_is_an_error(tmp_path):
    train = write(tmp_path / "train.csv", ROWS[:8])  # animal, finance
    test = write(tmp_path / "test.csv", [ROWS[8], ("a dog chased a ball", "animal")])  # + sport
    with pytest.raises(
        DataError,
        match=r"class\(es\) 'sport' \(1 example\) occur in val/test but not in the training "
        "split.*fix: add training examples",
    ):
        dm(name="files", path=str(train), test_path=str(test)).setup()


# --- sources own their options ------------------------------------------------------------------


def test_unknown_source_option_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        DataError,
        match=r"data=bbc_news has no option 'path' \(option\(s\) of data=files\); its options: "
        r"\(none\); fix: remove data.path",
    ):
        dm(name="bbc_news", path="x.csv")
    with pytest.raises(
        DataError,
        match="data=files has no option 'listops_seed' .*its options: path, val_path, test_path, "
        "text_column, label_column, num_classes",
    ):
        dm(name="files", path="x.csv", listops_seed=3)
    with pytest.raises(DataError, match="data=imdb has no option 'text_column'"):
        dm(name="imdb", text_column="body")


def test_tokenizer_choice_is_checked_per_data_set():
    assert dm().tokenizer_spec.name == "bpe" and dm(name="listops").tokenizer_spec.name == "listops"
    with pytest.raises(DataError, match="data=bbc_news does not support tokenizer=listops .*"
                       "supports tokenizer=bpe/bytes.*fix: tokenizer=bpe"):
        dm(tokenizer="listops")
    with pytest.raises(DataError, match="data=listops does not support tokenizer=bpe"):
        dm(name="listops", tokenizer={"name": "bpe", "vocab_size": 300})
    with pytest.raises(DataError, match="unknown tokenizer 'words'; valid: bpe, bytes, listops"):
        dm(tokenizer="words")
    with pytest.raises(DataError, match=r"vocab_size must be in 259..65536 \(.*\), got 100; fix"):
        dm(tokenizer={"name": "bpe", "vocab_size": 100})
    with pytest.raises(DataError, match=r"unknown tokenizer option\(s\) \['lowercase'\]"):
        dm(tokenizer={"name": "bpe", "lowercase": True})


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        ([5000, 500, 500], 20, [16, 2, 2]),  # ties go to the smaller splits
        ([1701, 213, 213], 200, [160, 20, 20]),
        ([1000, 1, 1], 3, [1, 1, 1]),  # every non-empty split keeps one
        ([10, 0, 5], 6, [4, 0, 2]),
        ([4, 2, 2], 20, [4, 2, 2]),  # already within the limit
    ],
)
def test_shrink_sizes(sizes, limit, expected):
    assert shrink_sizes(sizes, limit) == expected


def test_class_missing_from_a_small_sample_only_warns(tmp_path):
    rows = [(f"note {i}", "animal" if i % 2 else "finance") for i in range(12)]
    train = write(tmp_path / "train.csv", rows + [ROWS[8]])  # 6 + 6 + one sport example
    test = write(tmp_path / "test.csv", [ROWS[9], ROWS[10]])  # two sport examples
    # 5 of 15 examples: train keeps 4 (2 animal, 2 finance; sport's share is 0.3), test 1
    with pytest.warns(DataWarning, match="'sport' .*not in the training split.*raise data.limit"):
        m = dm(name="files", path=str(train), test_path=str(test), limit_examples=5,
               val_fraction=0.0, tokenizer="bytes")
        m.setup()
    assert 2 not in m.split_texts("train")[1] and 2 in m.split_texts("test")[1]


def test_warnings_before_an_error_still_reach_the_user(tmp_path):
    train = write(tmp_path / "train.csv", ROWS[:8])
    train.write_bytes(train.read_bytes().replace(b"cat", b"c\xfft"))
    test = write(tmp_path / "test.csv", [ROWS[8]])  # sport: not in train
    with pytest.warns(DataWarning, match="not valid UTF-8"):
        with pytest.raises(DataError, match="sport"):
            dm(name="files", path=str(train), test_path=str(test)).setup()
