"""Using attention-arena from another project: a user's package adds a backend and configs.

A tiny package is written and installed (``pip install --target``, no network) by the test, then
the commands run from an empty directory with it on ``PYTHONPATH``: its backend is found through
the ``attention_arena.backends`` entry point and its config groups through
``attention_arena.configs``; a plain ``--config-dir`` adds an experiment preset.

``ARENA_PYTHON`` names the interpreter that runs the commands (default: this one). CI points it
at a fresh virtualenv holding only the built wheel and torch (``.ci/wheel_smoke``).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import attention_arena
from conftest import TINY, cli_env, explain, read_metrics

EXT_BACKEND = '''
"""A user backend: softmax attention with a temperature (one module, one decorator)."""
import torch.nn.functional as F

from attention_arena.attention import SelfAttention, register_attention


@register_attention("ext_tempered")
class TemperedAttention(SelfAttention):
    def __init__(self, embed_dim, num_heads, temperature: float = 1.0, dropout=0.0, bias=True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias)
        self.temperature = temperature

    def attend(self, q, k, v, key_padding_mask=None, global_mask=None):
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q / self.temperature, k, v, attn_mask=mask)
'''

EXT_PYPROJECT = '''
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "arena-ext"
version = "0.0.1"

[project.entry-points."attention_arena.backends"]
ext_tempered = "arena_ext.tempered"

[project.entry-points."attention_arena.configs"]
arena_ext = "arena_ext.conf"

[tool.setuptools]
packages = ["arena_ext"]

[tool.setuptools.package-data]
arena_ext = ["conf/**/*.yaml"]
'''


@pytest.fixture(scope="module")
def ext_site(tmp_path_factory) -> Path:
    """Build and install the user's package into a fresh folder; returns that folder."""
    src = tmp_path_factory.mktemp("arena_ext_src")
    (src / "pyproject.toml").write_text(EXT_PYPROJECT)
    pkg = src / "arena_ext"
    (pkg / "conf" / "attention").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tempered.py").write_text(EXT_BACKEND)
    (pkg / "conf" / "attention" / "ext_tempered.yaml").write_text(
        "name: ext_tempered\ntemperature: 2.0\n")
    site = tmp_path_factory.mktemp("arena_ext_site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, explain(proc)
    return site


PYTHON = os.environ.get("ARENA_PYTHON", sys.executable)


def run(args: list[str], cwd: Path, site: Path | None = None, timeout: float = 300):
    env = cli_env(**({"PYTHONPATH": str(site)} if site else {}))
    return subprocess.run([PYTHON, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_version_and_typed_marker():
    assert attention_arena.__version__ == importlib.metadata.version("attention-arena")
    assert (Path(attention_arena.__file__).parent / "py.typed").is_file()
    for name in attention_arena.__all__:  # the documented public API resolves
        assert getattr(attention_arena, name) is not None


def test_registry_rejects_a_class_that_is_not_a_backend():
    from torch import nn

    from attention_arena.attention import register_attention

    with pytest.raises(TypeError, match="not a subclass of .*SelfAttention"):
        register_attention("not_a_backend")(nn.Linear)


def test_import_of_a_missing_module_is_a_clear_error():
    from attention_arena.attention import import_modules

    with pytest.raises(ImportError, match="cannot import 'no_such_pkg.attn'"):
        import_modules(["no_such_pkg.attn"])


@pytest.mark.integration
def test_train_from_an_empty_directory_writes_there(tmp_path):
    """The issue's smoke command, verbatim, from a directory that is not the repository."""
    proc = run(["-m", "attention_arena.train", "data.limit_examples=100", "trainer.max_epochs=1",
                "logger=csv", "trainer.enable_progress_bar=false"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    (metrics,) = tmp_path.glob("outputs/*/metrics.json")
    assert read_metrics(metrics.parent)["status"] == "ok"


@pytest.mark.integration
def test_entry_point_backend_trains_and_benchmarks_from_any_directory(ext_site, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = run(["-m", "attention_arena.train", "attention=ext_tempered",
                "hydra.run.dir=run", *TINY], work, ext_site)
    assert proc.returncode == 0, explain(proc)
    metrics = read_metrics(work / "run")
    assert metrics["status"] == "ok" and metrics["attention"] == "ext_tempered"
    # the YAML from the user's package was used (temperature 2.0, not the class default 1.0)
    assert "temperature: 2.0" in (work / "run" / "config_resolved.yaml").read_text()

    proc = run(["-m", "attention_arena.bench", "--backends", "full", "ext_tempered",
                "--lengths", "64", "--repeats", "1", "--warmup", "0", "--threads", "1",
                "--no-isolate", "--out", "bench"], work, ext_site)
    assert proc.returncode == 0, explain(proc)
    assert "ext_tempered" in (work / "bench" / "bench.csv").read_text()


@pytest.mark.integration
def test_user_config_dir_adds_an_experiment_preset(tmp_path):
    conf = tmp_path / "my_conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "my_preset.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /attention: longformer
        attention:
          window: 16
        model:
          embed_dim: 48
    """))
    proc = run(["-m", "attention_arena.train", "--config-dir", str(tmp_path / "my_conf"),
                "experiment=my_preset", "hydra.run.dir=run",
                *[o for o in TINY if not o.startswith("model.embed_dim")]], tmp_path)
    assert proc.returncode == 0, explain(proc)
    resolved = (tmp_path / "run" / "config_resolved.yaml").read_text()
    assert read_metrics(tmp_path / "run")["attention"] == "longformer"
    assert "window: 16" in resolved and "embed_dim: 48" in resolved


@pytest.mark.integration
def test_a_module_named_on_the_command_line_registers_its_backend(tmp_path):
    """No packaging: ``imports=[module]`` plus ``--config-dir`` for its YAML."""
    (tmp_path / "my_backend.py").write_text(EXT_BACKEND.replace("ext_tempered", "plain_tempered"))
    (tmp_path / "my_conf" / "attention").mkdir(parents=True)
    (tmp_path / "my_conf" / "attention" / "plain_tempered.yaml").write_text(
        "name: plain_tempered\ntemperature: 3.0\n")
    proc = run(["-m", "attention_arena.train", "--config-dir", "my_conf", "imports=[my_backend]",
                "attention=plain_tempered", "hydra.run.dir=run", *TINY], tmp_path, tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert read_metrics(tmp_path / "run")["attention"] == "plain_tempered"
    proc = run(["-m", "attention_arena.train", "imports=[no_such_module]", "hydra.run.dir=bad",
                *TINY], tmp_path)
    assert proc.returncode == 1 and "cannot import 'no_such_module'" in proc.stderr
