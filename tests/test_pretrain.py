"""Self-pretraining: BERT masking statistics, training-text-only windows, the MLM model, encoder
transfer across backends, and arena-pretrain -> arena-train init_from end to end."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from attention_arena.data.datamodule import TextClassificationDataModule
from attention_arena.data.tokenizer import ByteTokenizer, ListOpsTokenizer, TokenizerSpec
from attention_arena.model import TransformerClassifier
from attention_arena.pretrain import (
    IGNORE,
    MaskedLanguageModel,
    TextWindows,
    mask_tokens,
    pretrain,
    text_loaders,
)
from attention_arena.train import CONF_DIR, run_job
from attention_arena.transfer import TransferError, load_encoder
from conftest import TINY, read_metrics, train_in_process

SMALL = {"embed_dim": 16, "num_heads": 2, "ff_dim": 32, "num_layers": 2, "max_length": 64}


def test_mask_id_lies_just_past_every_vocabulary():
    bpe = TokenizerSpec("bpe", vocab_size=300).build(["some training text"] * 3)
    for tok in (ByteTokenizer(), ListOpsTokenizer(), bpe):
        assert tok.mask_id == tok.vocab_size
        assert tok.first_regular_id == 2
        ids = tok.encode("[MAX 1 2 ]" if tok.name == "listops" else "abc")
        assert tok.mask_id not in ids
        assert tok.decode([*ids, tok.mask_id]) == tok.decode(ids)  # [MASK] decodes to nothing


def test_masking_statistics_follow_bert():
    g = torch.Generator().manual_seed(0)
    B, N, V, mask_id = 64, 512, 258, 258
    ids = torch.randint(2, V, (B, N), generator=g)
    ids[:, 0] = 1  # CLS
    lengths = torch.randint(N // 4, N + 1, (B,), generator=g)
    pad = torch.arange(N)[None, :] >= lengths[:, None]
    ids[pad] = 0
    inputs, labels = mask_tokens(ids, pad, mask_id, V, mask_prob=0.15, generator=g)

    selected = labels != IGNORE
    eligible = ~pad & (ids >= 2)
    assert not (selected & ~eligible).any()  # never CLS or PAD
    assert torch.equal(inputs[:, 0], ids[:, 0]) and torch.equal(inputs[pad], ids[pad])
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # only selected tokens change
    n = int(selected.sum())
    assert abs(n / int(eligible.sum()) - 0.15) < 0.01
    masked = inputs[selected] == mask_id
    unchanged = inputs[selected] == ids[selected]
    randomised = ~masked & ~unchanged
    assert abs(masked.float().mean().item() - 0.8) < 0.02
    assert abs(unchanged.float().mean().item() - 0.1) < 0.015  # (+ random draws of the same id)
    assert abs(randomised.float().mean().item() - 0.1) < 0.015
    rand_ids = inputs[selected][randomised]
    assert rand_ids.min() >= 2 and rand_ids.max() < V  # an ordinary token, never [MASK]


def test_a_tiny_batch_still_gets_one_target():
    ids = torch.tensor([[1, 5, 6, 0]])
    _, labels = mask_tokens(ids, ids == 0, 10, 10, mask_prob=1e-6)
    assert (labels != IGNORE).sum() == 1 and labels[0, 0] == IGNORE and labels[0, 3] == IGNORE


def test_windows_cover_whole_documents_of_the_training_split_only():
    dm = TextClassificationDataModule(tokenizer="bytes", max_length=64, limit_examples=40)
    train_loader, val_loader = text_loaders(dm, 64, whole_documents=True, seed=0)
    tok = dm.tokenizer
    docs = {split: tok.encode_batch(dm.split_texts(split)[0]) for split in dm.splits}
    assert len(train_loader.dataset) == sum(-(-(len(d) - 1) // 63) for d in docs["train"])
    as_bytes = {split: b"".join(d[1:].tobytes() for d in ds) for split, ds in docs.items()}
    seen = []
    for batch in train_loader:
        for ids, pad in zip(batch["input_ids"], batch["padding_mask"], strict=True):
            window = ids[~pad]
            assert window[0] == tok.cls_id and len(window) <= 64
            seen.append(window[1:].numpy().astype(np.uint16))
    # the windows are exactly the training documents cut in 63-token pieces: all of their text,
    # and nothing else (val/test documents never reach the training loader)
    expected = [d[1:][i:i + 63].tobytes() for d in docs["train"] for i in range(0, len(d) - 1, 63)]
    assert sorted(w.tobytes() for w in seen) == sorted(expected)
    assert sum(len(w) for w in seen) == len(as_bytes["train"]) // 2  # uint16 ids
    other = {d[1:64].tobytes() for split in ("val", "test") for d in docs[split]}
    assert not other & {w.tobytes() for w in seen}
    assert len(val_loader.dataset) == sum(-(-(len(d) - 1) // 63) for d in docs["val"])
    prefix = TextWindows(docs["train"], 64, tok.cls_id, whole_documents=False)
    assert len(prefix) == len(docs["train"])


def test_masked_lm_shares_the_classifier_names_and_ties_the_decoder():
    mlm = MaskedLanguageModel(258, attention={"name": "full"}, **SMALL)
    clf = TransformerClassifier(258, 5, attention={"name": "full"}, **SMALL)
    encoder = {k for k in clf.state_dict() if not k.startswith("head.")}
    assert encoder <= set(mlm.state_dict())
    assert mlm.head.weight is mlm.tok_emb.weight and mlm.tok_emb.num_embeddings == 259
    ids = torch.randint(2, 259, (3, 20))
    pos = torch.zeros(3, 20, dtype=torch.bool)
    pos[0, 3] = pos[2, 5] = True
    assert mlm(ids, None, pos).shape == (2, 259)
    untied = MaskedLanguageModel(258, tie_weights=False, **SMALL)
    assert untied.head.weight is not untied.tok_emb.weight


@pytest.mark.parametrize("backend,fresh", [
    ("full", set()), ("performer", {"projection", "_extra_state"}),
    ("linformer", {"proj_k", "proj_v"}), ("nystrom", {"conv.weight"}),
])
def test_encoder_transfer_across_backends(backend, fresh):
    torch.manual_seed(0)
    source = MaskedLanguageModel(258, attention={"name": "full"}, **SMALL)
    extra = {"conv_kernel": 3} if backend == "nystrom" else {}
    target = TransformerClassifier(258, 5, attention={"name": backend, **extra}, **SMALL)
    head = target.head.weight.clone()
    report = load_encoder(target, source.state_dict())
    assert {n.split("attn.")[-1] for n in report.fresh} == fresh
    assert report.adapted == ["tok_emb.weight: first 258 of 259 rows"]
    assert "lm_transform.0.weight" not in report.ignored and "head.weight" not in report.loaded
    got, src = target.state_dict(), source.state_dict()
    for name in report.loaded:
        n = got[name].shape[0]
        assert torch.equal(got[name], src[name][:n]), name
    for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert f"blocks.1.attn.{part}.weight" in report.loaded
    assert torch.equal(target.head.weight, head)  # the classifier head stays fresh
    target(torch.randint(0, 258, (2, 64)))  # and the model runs


def test_encoder_transfer_carries_the_embedding_convolution():
    torch.manual_seed(0)
    source = MaskedLanguageModel(258, attention={"name": "full"}, embedding_conv=5, **SMALL)
    target = TransformerClassifier(258, 5, attention={"name": "linformer"}, embedding_conv=5,
                                   **SMALL)
    report = load_encoder(target, source.state_dict())
    assert {"embed_conv.conv.weight", "embed_conv.conv.bias"} <= set(report.loaded)
    assert torch.equal(target.embed_conv.conv.weight, source.embed_conv.conv.weight)


def test_encoder_transfer_errors():
    source = MaskedLanguageModel(258, **SMALL).state_dict()
    with pytest.raises(TransferError, match="same width"):
        load_encoder(TransformerClassifier(258, 5, **{**SMALL, "embed_dim": 32}), source)
    with pytest.raises(TransferError, match="max_length"):
        load_encoder(TransformerClassifier(258, 5, **{**SMALL, "max_length": 128}), source)
    with pytest.raises(TransferError, match="none of this model"):
        load_encoder(TransformerClassifier(258, 5, **SMALL), {"other.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- end to end
PRETRAIN = [o for o in TINY if not o.startswith("data.max_length")] + [
    "tokenizer=bytes", "data.max_length=64", "data.limit_examples=40",
    "pretrain.whole_documents=false"]


def compose_pretrain(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="pretrain", overrides=list(overrides))


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = run_job(compose_pretrain(*PRETRAIN, f"output_dir={run_dir}"), work=pretrain,
                          identity={"kind": "pretrain"})
    assert metrics["status"] == "ok", metrics["error"]
    return run_dir


def test_pretrain_run_directory(pretrain_run):
    metrics = read_metrics(pretrain_run)
    assert metrics["kind"] == "pretrain" and metrics["steps"] > 0
    assert 0.0 <= metrics["val_acc"] <= 1.0
    assert (pretrain_run / "checkpoints" / "last.ckpt").is_file()
    assert not list((pretrain_run / "checkpoints").glob("best*"))
    assert (pretrain_run / "tokenizer.json").is_file()
    header = (pretrain_run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/mlm_loss_step" in header and "val/mlm_acc" in header


def test_fine_tune_from_a_pretrained_encoder_with_another_backend(pretrain_run, tmp_path):
    args = [o for o in PRETRAIN if not o.startswith("pretrain.")]
    metrics = train_in_process(tmp_path / "ft", *args, "attention=linformer",
                               f"init_from={pretrain_run}")
    assert metrics["status"] == "ok", metrics["error"]
    notes = read_metrics(tmp_path / "ft")["notes"]
    assert any("init_from" in n and "loaded 19 tensors" in n for n in notes), notes
    assert any("fresh (not in the source): blocks.0.attn.proj_k" in n for n in notes), notes


def test_init_from_another_tokenizer_or_width_fails_clearly(pretrain_run, tmp_path):
    args = [o for o in PRETRAIN if not o.startswith(("pretrain.", "tokenizer="))]
    metrics = train_in_process(tmp_path / "bpe", *args, f"init_from={pretrain_run}")
    assert metrics["status"] == "failed" and "vocabulary" in metrics["error"]
    metrics = train_in_process(tmp_path / "wide", *[o for o in PRETRAIN if "pretrain." not in o],
                               "model.embed_dim=64", f"init_from={pretrain_run}")
    assert metrics["status"] == "failed" and "another encoder shape" in metrics["error"]
    metrics = train_in_process(tmp_path / "conv", *[o for o in PRETRAIN if "pretrain." not in o],
                               "model.embedding_conv=3", f"init_from={pretrain_run}")
    assert metrics["status"] == "failed" and "model.embedding_conv: None (source) vs 3" in \
        metrics["error"]
