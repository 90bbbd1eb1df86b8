"""attention_arena.runs: the one rule for finding a run's checkpoint (used by init_from and
distillation teachers, arena-compress and arena-explain)."""

from __future__ import annotations

import os

import pytest

from attention_arena.compress.run import RunError as CompressRunError
from attention_arena.explain.run import RunError as ExplainRunError
from attention_arena.runs import RunError, find_checkpoint
from attention_arena.transfer import TransferError
from attention_arena.transfer import find_checkpoint as transfer_find_checkpoint


def touch(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))


def test_best_is_the_newest_best_then_last_with_a_note(tmp_path):
    run = tmp_path / "run"
    touch(run / "checkpoints" / "best-epoch09-acc0.9.ckpt", 100)
    touch(run / "checkpoints" / "best-epoch10-acc0.8.ckpt", 200)  # newer, sorts first by name
    touch(run / "checkpoints" / "last.ckpt", 300)
    assert find_checkpoint(run) == (run / "checkpoints" / "best-epoch10-acc0.8.ckpt", [])
    assert find_checkpoint(run / "checkpoints", "last") == (run / "checkpoints" / "last.ckpt", [])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert find_checkpoint(ckpt, "best") == (ckpt, [])  # a file is taken as it is

    for best in (run / "checkpoints").glob("best*.ckpt"):
        best.unlink()
    path, notes = find_checkpoint(run)
    assert path == ckpt and len(notes) == 1 and "using last.ckpt" in notes[0]


def test_missing_runs_and_checkpoints_are_clear_errors_of_every_caller(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        find_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunError, match="no checkpoint in .*best\\*.ckpt and last.ckpt"):
        find_checkpoint(tmp_path / "empty")
    with pytest.raises(TransferError, match="no checkpoint"):
        transfer_find_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="prefer"):
        find_checkpoint(tmp_path / "empty", "newest")
    assert CompressRunError is RunError and ExplainRunError is RunError
    assert issubclass(TransferError, RunError)
