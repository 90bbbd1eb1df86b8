"""Knowledge distillation: the loss, the frozen teacher, teacher and student lengths, errors."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from attention_arena.data.datamodule import PadCollate, TextClassificationDataModule
from attention_arena.data.tokenizer import ByteTokenizer
from attention_arena.distill import distill_options, distillation_loss, load_teacher
from attention_arena.lit_module import ArenaClassifier
from attention_arena.model import TransformerClassifier
from attention_arena.transfer import TransferError, read_run
from conftest import read_metrics, train_in_process

SMALL = {"embed_dim": 16, "num_heads": 2, "ff_dim": 32, "num_layers": 1, "max_length": 32,
         "dropout": 0.0}


# --------------------------------------------------------------------------- the loss
def test_distillation_loss_matches_a_hand_computed_value():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    y = torch.tensor([0, 2])
    T, alpha = 2.0, 0.3

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    kd = ce = 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist(), strict=True):
        ps, pt = softmax([v / T for v in srow]), softmax([v / T for v in trow])
        kd += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True))
        ce -= math.log(softmax(srow)[label])
    kd, ce = T * T * kd / 2, ce / 2  # batch means, KD scaled by T^2

    loss, got_kd, got_ce = distillation_loss(s, t, y, alpha, T)
    assert got_kd.item() == pytest.approx(kd, rel=1e-5)
    assert got_ce.item() == pytest.approx(ce, rel=1e-5)
    assert loss.item() == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)
    # the same teacher and student: no KD term; alpha 0: plain cross-entropy
    assert distillation_loss(s, s, y, 1.0, T)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(s, t, y, 0.0, T)[0].item() == pytest.approx(ce, rel=1e-5)


def test_distill_options():
    assert distill_options({"teacher": None, "alpha": 0.5, "temperature": 2.0}) is None
    assert distill_options({"teacher": "x", "alpha": 0.9, "temperature": 4}) == {
        "teacher": "x", "alpha": 0.9, "temperature": 4.0}
    with pytest.raises(ValueError, match="unknown distill option"):
        distill_options({"teacher": "x", "temprature": 2})
    with pytest.raises(ValueError, match="alpha"):
        ArenaClassifier(10, 3, model=SMALL, distill={"alpha": 1.5, "temperature": 2.0})


# --------------------------------------------------------------------------- the frozen teacher
def _random_loader(n=16, length=12, vocab=10, classes=3, teacher_length=None):
    g = torch.Generator().manual_seed(0)
    items = [(np.concatenate([[1], torch.randint(2, vocab, (length - 1,), generator=g).numpy()]
                             ).astype(np.uint16), i % classes) for i in range(n)]
    return DataLoader(items, batch_size=4,
                      collate_fn=PadCollate(max_length=length, teacher_length=teacher_length))


def test_teacher_is_frozen_in_eval_mode_outside_optimizer_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    teacher = TransformerClassifier(10, 3, **{**SMALL, "dropout": 0.5}, attention={"name": "full"})
    before = {k: v.clone() for k, v in teacher.state_dict().items()
              if isinstance(v, torch.Tensor)}
    student = ArenaClassifier(10, 3, model=SMALL, attention={"name": "performer"},
                              distill={"alpha": 0.5, "temperature": 2.0, "teacher": "mem"})
    student.set_teacher(teacher)
    student_before = {k: v.clone() for k, v in student.model.state_dict().items()
                      if isinstance(v, torch.Tensor)}

    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in student.parameters()}
    assert all(not p.requires_grad for p in teacher.parameters())
    student.train()  # what Lightning does: must not reach the teacher
    assert not teacher.training

    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(student, train_dataloaders=_random_loader())
    opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not opt_ids & teacher_ids
    assert not teacher.training
    for k, v in before.items():
        assert torch.equal(teacher.state_dict()[k], v), f"teacher {k} changed"
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(student.model.state_dict()[k], v)
               for k, v in student_before.items()), "the student did not learn"
    assert {"train/kd_loss", "train/ce_loss"} <= set(trainer.callback_metrics)

    trainer.save_checkpoint(tmp_path / "s.ckpt")
    saved = torch.load(tmp_path / "s.ckpt", map_location="cpu", weights_only=False)
    model_keys = {k for k in saved["state_dict"] if not k.startswith("metrics.")}
    assert model_keys == {f"model.{k}" for k in student.model.state_dict()}
    # a distilled checkpoint loads without its teacher
    assert ArenaClassifier.load_from_checkpoint(tmp_path / "s.ckpt").teacher is None


def test_collate_gives_the_teacher_a_longer_view_of_the_same_documents():
    items = [(np.arange(1, 11, dtype=np.uint16), 0), (np.arange(1, 5, dtype=np.uint16), 1)]
    batch = PadCollate(max_length=6, teacher_length=9)(items)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 0, 0]]
    assert batch["padding_mask"].tolist() == [[False] * 6, [False] * 4 + [True] * 2]
    assert batch["teacher_input_ids"].tolist() == [list(range(1, 10)), [1, 2, 3, 4] + [0] * 5]
    assert batch["teacher_padding_mask"][1].tolist() == [False] * 4 + [True] * 5
    assert "teacher_input_ids" not in PadCollate(max_length=6)(items)


def test_datamodule_encodes_at_the_teacher_length_and_cuts_the_student_view():
    kw = {"tokenizer": "bytes", "limit_examples": 30, "batch_size": 8}
    dm = TextClassificationDataModule(max_length=64, teacher_max_length=256, **kw)
    plain = TextClassificationDataModule(max_length=64, **kw)
    batch = next(iter(dm.train_dataloader()))
    ref = next(iter(plain.train_dataloader()))
    assert torch.equal(batch["input_ids"], ref["input_ids"])  # the student sees the same inputs
    assert batch["teacher_input_ids"].shape[1] == 256 > batch["input_ids"].shape[1] == 64
    assert torch.equal(batch["teacher_input_ids"][:, :64], batch["input_ids"])
    assert (batch["teacher_input_ids"][:, 0] == 1).all()  # CLS first in both views
    assert "teacher_input_ids" not in next(iter(dm.val_dataloader()))
    assert dm.data_stats() == plain.data_stats()  # statistics of the student's length


# --------------------------------------------------------------------------- through arena-train
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A TINY full-attention classifier at 256 BPE tokens."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ARENA_RAISE", raising=False)
        assert train_in_process(run_dir)["status"] == "ok"
    return run_dir


def test_distilled_student_of_another_backend_width_and_length(teacher_run, tmp_path):
    run_dir = tmp_path / "student"
    metrics = train_in_process(run_dir, f"distill.teacher={teacher_run}", "attention=linformer",
                               "data.max_length=128", "model.embed_dim=16", "distill.alpha=0.7")
    assert metrics["status"] == "ok", metrics["error"]
    assert any("distilled from full L256" in n for n in read_metrics(run_dir)["notes"])
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/kd_loss_step" in header and "train/ce_loss_step" in header
    saved = torch.load(next((run_dir / "checkpoints").glob("best*.ckpt")), weights_only=False)
    assert saved["hyper_parameters"]["distill"]["alpha"] == 0.7
    assert all(k.startswith(("model.", "metrics.")) for k in saved["state_dict"])


def test_teacher_mismatches_are_clear_errors(teacher_run, tmp_path):
    run = read_run(teacher_run)
    names = run.hparams["class_names"]
    dm = TextClassificationDataModule(max_length=256, limit_examples=64)  # the teacher's data
    load_teacher(run, dm.tokenizer, dm.vocab_size, names)  # fine
    with pytest.raises(TransferError, match="vocabulary of .* ids"):
        load_teacher(run, ByteTokenizer(), 258, names)
    with pytest.raises(TransferError, match="classes"):
        load_teacher(run, dm.tokenizer, dm.vocab_size, [*names[:-1], "other"])
    with pytest.raises(TransferError, match="predicts 5 classes"):
        load_teacher(run, dm.tokenizer, dm.vocab_size, names[:3])
    with pytest.raises(TransferError, match="does not exist"):
        load_teacher(tmp_path / "nowhere", dm.tokenizer, dm.vocab_size, names)
    with pytest.raises(TransferError, match="no checkpoint"):
        load_teacher(tmp_path, dm.tokenizer, dm.vocab_size, names)
    # through arena-train: a bytes student of a BPE teacher fails with the reason
    metrics = train_in_process(tmp_path / "s", f"distill.teacher={teacher_run}", "tokenizer=bytes")
    assert metrics["status"] == "failed" and "vocabulary" in metrics["error"]


def test_student_initialised_from_its_teacher_and_distilled(teacher_run, tmp_path):
    """DistilBERT's recipe: init_from and distill.teacher name the same run; the student of
    another backend starts from the teacher's encoder (its head fresh) and trains on its soft
    targets. With a learning rate of ~0 the trained student still holds the teacher's tensors."""
    run_dir = tmp_path / "student"
    metrics = train_in_process(run_dir, f"distill.teacher={teacher_run}",
                               f"init_from={teacher_run}", "attention=linformer",
                               "optim.lr=1e-12")
    assert metrics["status"] == "ok", metrics["error"]
    notes = read_metrics(run_dir)["notes"]
    assert any("distilled from full" in n for n in notes), notes
    assert any("init_from" in n and "loaded" in n for n in notes), notes
    teacher = torch.load(next((teacher_run / "checkpoints").glob("best*.ckpt")),
                         weights_only=False)["state_dict"]
    student = torch.load(next((run_dir / "checkpoints").glob("best*.ckpt")),
                         weights_only=False)["state_dict"]
    shared = [k for k in teacher if k.startswith("model.") and not k.startswith("model.head")]
    assert shared and all(k in student for k in shared)
    for k in shared:
        torch.testing.assert_close(student[k], teacher[k], rtol=0, atol=1e-6, msg=k)
    assert any("proj_k" in k for k in student)  # linformer's own E projection, fresh
