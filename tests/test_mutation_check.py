"""tools/mutation_check.py: its mutations still match the code, and every one is caught."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("mutation_check", REPO / "tools/mutation_check.py")
mutation_check = sys.modules["mutation_check"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_check)


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_edits_exactly_one_place(mutation):
    text = (REPO / "src/attention_arena/attention" / mutation.path).read_text()
    assert text.count(mutation.old) == 1
    assert mutation.new != mutation.old


@pytest.mark.slow
def test_every_mutation_is_caught():
    proc = subprocess.run([sys.executable, str(REPO / "tools/mutation_check.py")],
                          capture_output=True, text=True, timeout=900)
    n = len(mutation_check.MUTATIONS)
    assert proc.returncode == 0 and f"{n}/{n} caught" in proc.stdout, proc.stdout + proc.stderr
