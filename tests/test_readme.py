"""The README's Python examples run as written (each block in a fresh interpreter), so they
cannot rot. A block is skipped only if its first line is ``# not run: <reason>``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env, explain

BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index, tmp_path):
    code = BLOCKS[index]
    if code.startswith("# not run:"):
        pytest.skip(code.splitlines()[0])
    script = Path(tmp_path) / f"readme_example_{index}.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README example {index}:\n{code}\n{explain(proc)}"
