"""Tests of the tokenizer group: BPE trained on train only, its cache, long files, saving, stats."""

from __future__ import annotations

import csv
import pickle
import random

import numpy as np
import pandas as pd
import pytest

from attention_arena.data import (
    BPETokenizer,
    ByteTokenizer,
    DataError,
    ListOpsTokenizer,
    TextClassificationDataModule,
    load_tokenizer,
    pipeline,
)
from attention_arena.train import CONF_DIR

WORDS = "market goal film vote phone rate team actor party chip bank match album law data".split()


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTENTION_ARENA_CACHE", str(tmp_path / "arena_cache"))


def write_csv(path, texts, labels):
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return str(path)


def corpus(n: int, seed: int, extra: str = "") -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(40)) + f" doc{seed}x{i} {extra}"
             for i in range(n)]
    return texts, ["a" if i % 2 else "b" for i in range(n)]


def files_dm(tmp_path, train, val, test, **kw) -> TextClassificationDataModule:
    return TextClassificationDataModule(
        name="files",
        path=write_csv(tmp_path / "train.csv", *train),
        val_path=write_csv(tmp_path / "val.csv", *val),
        test_path=write_csv(tmp_path / "test.csv", *test),
        **{"tokenizer": {"name": "bpe", "vocab_size": 400}, "max_length": 64, **kw},
    )


def spy_training(monkeypatch) -> list[list[str]]:
    """Record the texts each BPE training sees."""
    seen: list[list[str]] = []
    real = BPETokenizer.train.__func__

    def train(cls, texts, vocab_size):
        seen.append(list(texts))
        return real(cls, texts, vocab_size)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(train))
    return seen


def test_bpe_is_trained_on_the_training_split_only(tmp_path, monkeypatch):
    seen = spy_training(monkeypatch)
    secret = " ".join(["qxjvqxjv"] * 30)  # only in val/test: frequent enough to get merges
    m = files_dm(tmp_path, corpus(30, 0), corpus(6, 1, secret), corpus(6, 2, secret))
    m.setup()
    assert seen == [m.split_texts("train")[0]]
    assert not any("qxjv" in t for t in seen[0])
    vocab = m.tokenizer.hf.get_vocab()
    assert not [tok for tok in vocab if "qx" in tok or "xj" in tok or "jv" in tok or "vq" in tok]
    # control: the same text in the training split does get merged into tokens
    (tmp_path / "control").mkdir()
    control = files_dm(tmp_path / "control", corpus(30, 0, secret), corpus(6, 1), corpus(6, 2))
    assert [tok for tok in control.tokenizer.hf.get_vocab() if "qxjv" in tok]


def test_bpe_splits_carved_from_one_file_train_only(tmp_path, monkeypatch):
    seen = spy_training(monkeypatch)
    texts, labels = corpus(40, 3)
    m = TextClassificationDataModule(
        name="files", path=write_csv(tmp_path / "all.csv", texts, labels),
        tokenizer={"name": "bpe", "vocab_size": 300}, max_length=32,
    )
    m.setup()
    held_out = set(m.split_texts("val")[0] + m.split_texts("test")[0])
    assert len(seen) == 1 and held_out and not held_out & set(seen[0])
    assert sorted(seen[0]) == sorted(m.split_texts("train")[0])


def test_bpe_cache_hit_and_fingerprint(tmp_path, monkeypatch):
    seen = spy_training(monkeypatch)
    built = []
    real_build = pipeline._build
    monkeypatch.setattr(pipeline, "_build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    train, val, test = corpus(30, 0), corpus(6, 1), corpus(6, 2)

    first = files_dm(tmp_path, train, val, test)
    first.setup()
    assert (len(seen), len(built)) == (1, 1)
    tok_files = list((tmp_path / "arena_cache" / "tokenizers").glob("files-bpe-*.json"))
    assert len(tok_files) == 1

    hit = files_dm(tmp_path, train, val, test)
    hit.setup()
    assert (len(seen), len(built)) == (1, 1) and hit.data.path == first.data.path
    assert hit.tokenizer.encode("market goal") == first.tokenizer.encode("market goal")

    longer = files_dm(tmp_path, train, val, test, max_length=128)  # same tokenizer, new arrays
    longer.setup()
    assert (len(seen), len(built)) == (1, 2) and longer.data.path != first.data.path

    smaller = files_dm(tmp_path, train, val, test, tokenizer={"name": "bpe", "vocab_size": 300})
    smaller.setup()
    assert (len(seen), len(built)) == (2, 3) and smaller.vocab_size == 300

    changed = files_dm(tmp_path, corpus(30, 5), val, test)  # new training text: retrain
    changed.setup()
    assert (len(seen), len(built)) == (3, 4) and changed.data.path != first.data.path
    assert len(list((tmp_path / "arena_cache" / "tokenizers").glob("files-bpe-*.json"))) == 3


def test_bpe_training_is_deterministic():
    texts = corpus(40, 7)[0]  # each training hashes with fresh random hash-map seeds
    a, b = BPETokenizer.train(texts, 350), BPETokenizer.train(list(texts), 350)
    assert a.hf.to_str() == b.hf.to_str()


def test_long_csv_fields_load_through_files_with_bpe(tmp_path):
    """Fields of hundreds of KB (above Python csv's 131,072-character default limit)."""
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(60_000)) + f" end{i}" for i in range(12)]
    assert min(map(len, texts)) > 300_000 > csv.field_size_limit()
    path = write_csv(tmp_path / "long.csv", texts, ["x", "y"] * 6)
    m = TextClassificationDataModule(
        name="files", path=path, tokenizer={"name": "bpe", "vocab_size": 300}, max_length=256,
        val_fraction=0.25, test_fraction=0.25,
    )
    m.setup()
    got = sorted(t for s in ("train", "val", "test") for t in m.split_texts(s)[0])
    assert got == sorted(texts)  # full texts, nothing cut by the reader
    stats = m.data_stats()
    assert all(st["truncated_share"] == 1.0 and st["tokens_p90"] > 10_000 for st in stats.values())
    batch = next(iter(m.train_dataloader()))
    assert batch["input_ids"].shape[1] == 256 and (batch["input_ids"][:, 0] == 1).all()


@pytest.mark.parametrize("name", ["bpe", "bytes", "listops"])
def test_save_load_tokenizer_round_trip(tmp_path, name):
    if name == "listops":
        m = TextClassificationDataModule(
            name="listops", listops_min_length=5, listops_max_length=40, listops_num_train=20,
            listops_num_val=4, listops_num_test=4, max_length=64,
        )
        new_text = "[MAX 2 [SM 3 4 ] 9 ]"
    else:
        tok = {"name": "bpe", "vocab_size": 300} if name == "bpe" else name
        m = files_dm(tmp_path, corpus(30, 0), corpus(6, 1), corpus(6, 2), tokenizer=tok)
        new_text = "A market vote, never seen: ünïcödé 🙂 party chip"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = m.save_tokenizer(run_dir)
    assert path == run_dir / "tokenizer.json" and path.is_file()
    loaded = load_tokenizer(run_dir)
    assert type(loaded) is type(m.tokenizer) and loaded.vocab_size == m.vocab_size
    assert loaded.encode(new_text, 16) == m.tokenizer.encode(new_text, 16)
    assert loaded.decode(loaded.encode(new_text)) == new_text
    clone = pickle.loads(pickle.dumps(m.tokenizer))
    assert clone.encode(new_text) == m.tokenizer.encode(new_text)
    with pytest.raises(DataError, match="no tokenizer file at .*fix: pass the run directory"):
        load_tokenizer(tmp_path / "nowhere")


def test_bpe_ids_pad_cls_and_truncation():
    tok = BPETokenizer.train(corpus(30, 0)[0], 300)
    ids = tok.encode("market goal film")
    assert ids[0] == 1 and 0 not in ids and tok.hf.id_to_token(0) == "[PAD]"
    assert len(ids) == tok.num_tokens("market goal film") and len(ids) < len("market goal film")
    assert tok.encode("market goal film", 2) == ids[:2]
    assert [a.tolist() for a in tok.encode_batch(["market", "goal film"])] == [
        tok.encode("market"), tok.encode("goal film")]
    assert tok.decode(ids) == "market goal film"


def test_data_stats_on_a_hand_made_data_set(tmp_path):
    # bytes tokenizer: tokens = UTF-8 bytes + CLS
    train = (["abcd", "abcdefghi", "x" * 19], ["p", "q", "p"])  # 5, 10, 20 tokens
    val = (["é" * 7], ["q"])  # 15 tokens (2 bytes per é)
    test = (["uvw", "uvwxyz"], ["p", "q"])  # 4, 7 tokens
    m = files_dm(tmp_path, train, val, test, tokenizer="bytes", max_length=10)
    stats = m.data_stats()
    assert stats["train"] == pytest.approx(
        {"tokens_mean": 35 / 3, "tokens_p90": 18.0, "truncated_share": 1 / 3, "n": 3}
    )  # p90 of [5, 10, 20]: 10 + 0.8 * (20 - 10)
    assert stats["val"] == pytest.approx(
        {"tokens_mean": 15.0, "tokens_p90": 15.0, "truncated_share": 1.0, "n": 1}
    )
    assert stats["test"] == pytest.approx(
        {"tokens_mean": 5.5, "tokens_p90": 6.7, "truncated_share": 0.0, "n": 2}
    )
    # the loader holds the truncated ids: at most max_length, CLS first
    assert np.diff(m.splits["train"].offsets).tolist() == [5, 10, 10]
    assert ByteTokenizer().decode(m.splits["train"].example(2)) == "x" * 9


def test_hydra_tokenizer_defaults_per_data_set():
    import hydra
    from hydra import compose, initialize_config_dir

    def tokenizer(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("train", overrides=list(overrides))
        dm = hydra.utils.instantiate(cfg.data, _convert_="all")
        return dm.tokenizer_spec.key()

    assert tokenizer() == {"name": "bpe", "vocab_size": 8000}
    assert tokenizer("tokenizer=bytes") == {"name": "bytes"}
    assert tokenizer("tokenizer.vocab_size=4000") == {"name": "bpe", "vocab_size": 4000}
    assert tokenizer("data=files", "data.path=x.csv") == {"name": "bpe", "vocab_size": 8000}
    assert tokenizer("data=imdb") == {"name": "bpe", "vocab_size": 8000}
    assert tokenizer("data=listops") == {"name": "listops"}
    assert tokenizer("experiment=lra_listops") == {"name": "listops"}
    assert tokenizer("experiment=lra_text") == {"name": "bytes"}
    # hydra.utils.instantiate wraps the DataError, keeping its message
    with pytest.raises(Exception, match="data=listops does not support tokenizer=bytes"):
        tokenizer("data=listops", "tokenizer=bytes")
    with pytest.raises(Exception, match="data=bbc_news does not support tokenizer=listops"):
        tokenizer("tokenizer=listops")


def test_listops_tokenizer_is_unchanged():
    tok = ListOpsTokenizer()
    assert tok.encode("[MAX 2 9 [MIN 4 7 ] 0 ]") == [1, 13, 4, 11, 12, 6, 9, 16, 2, 16]


def test_splits_and_ids_do_not_depend_on_the_tokenizer(tmp_path):
    train, val, test = corpus(30, 0), corpus(6, 1), corpus(6, 2)
    bpe = files_dm(tmp_path, train, val, test)
    raw = files_dm(tmp_path, train, val, test, tokenizer="bytes", max_length=512)
    for split in ("train", "val", "test"):
        assert bpe.split_texts(split) == raw.split_texts(split)
        assert bpe.example_ids(split) == raw.example_ids(split)
