"""Mutation check for the attention backends: every mutation below must make a test fail.

    python tools/mutation_check.py                # all mutations
    python tools/mutation_check.py -k longformer  # those whose name contains "longformer"

Each mutation edits one line of a fresh copy of ``src/`` in a temporary directory; the relevant
tests then run in a subprocess whose ``PYTHONPATH`` is that copy. Before mutating, the script
checks that the subprocess imports the copy's ``attention_arena`` and that the unmutated copy
passes; the first mutation (a sanity one) breaks exact attention outright. Prints a table
mutation -> caught / SURVIVED and exits 1 if any mutation survived or a check failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = "tests/test_attention.py"
SPARSE_TESTS = "tests/test_attention_sparse.py"
FAMILY_TESTS = "tests/test_attention_families.py"


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path``, then run the tests
    of ``tests`` selected by the pytest ``-k`` expression ``select``."""

    name: str
    path: str  # relative to src/attention_arena/attention/
    old: str
    new: str
    select: str
    tests: str = TESTS


MUTATIONS = [
    Mutation("sanity: full attention returns zeros", "full.py",
             "return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)",
             "return 0 * F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)", "full"),
    Mutation("performer: drop the -x·Σ(g⊙e) term of the backward", "performer.py",
             "grad_x.sub_(x * dz.sum(-1, keepdim=True))", "pass", "performer"),
    Mutation("performer: flip the sign of -x·Σ(g⊙e)", "performer.py",
             "grad_x.sub_(x * dz.sum(-1, keepdim=True))",
             "grad_x.add_(x * dz.sum(-1, keepdim=True))", "performer"),
    Mutation("performer: treat the stabiliser as a constant (detached)", "performer.py",
             "flat.scatter_add_(-1, top, -domain_sum)", "pass", "performer"),
    Mutation("performer: clamp every stabiliser at -1e4 (queries and keys)", "performer.py",
             "e.sub_(half_sq + c).exp_()", "e.sub_(half_sq + c.clamp_min(-1e4)).exp_()",
             "performer"),
    Mutation("performer: clamp the keys' stabiliser at -1e4", "performer.py",
             "c = c.masked_fill(c.isneginf(), 0.0)", "c = c.clamp_min(-1e4)", "performer"),
    Mutation("performer: draw index + 1", "performer.py",
             "index = self.calls // max(self.redraw_interval, 1)",
             "index = self.calls // max(self.redraw_interval, 1) + 1", "performer"),
    Mutation("longformer: drop `global_mask & keep` (padded globals)", "longformer.py",
             "global_mask = global_mask & keep", "global_mask = global_mask",
             "longformer or band"),
    Mutation("longformer: drop `& keep` in the dense band", "longformer.py",
             "allowed = allowed & keep[:, None, :]", "allowed = allowed", "longformer or band"),
    Mutation("longformer: drop `keep &` in the blocked band (with globals)", "longformer.py",
             "else keep & ~global_mask", "else ~global_mask", "longformer or band"),
    Mutation("longformer: blocked band ignores padding (no globals)", "longformer.py",
             "key_ok = keep if global_mask is None", "key_ok = keep | True if global_mask is None",
             "longformer or band"),
    Mutation("longformer: global queries ignore padding (blocked)", "_sparse.py",
             "full_attention(take_rows(q, idx), kp, vp, ~keep_p,",
             "full_attention(take_rows(q, idx), kp, vp, None,", "longformer or band"),
    Mutation("sparse: kernel backward without the merged log-sum-exp", "_sparse.py",
             "grad_out, q, k, v, out, total, 0.0, False, attn_mask=bias)",
             "grad_out, q, k, v, out, 0 * total, 0.0, False, attn_mask=bias)",
             "merged or longformer", SPARSE_TESTS),
    Mutation("sparse: a key set's row without keys keeps the kernel's lse 0", "_sparse.py",
             'lse = lse.masked_fill(bias.isneginf().all(-1).expand_as(lse), float("-inf"))',
             "lse = lse", "merged", SPARSE_TESTS),
    Mutation("sparse: small-set backward without the row term dO·o", "_sparse.py",
             "_sliced(_row_dot_diff, grad_out, v_j, out)",
             "_sliced(_row_dot_diff, grad_out, v_j, 0 * out)", "merged", SPARSE_TESTS),
    Mutation("sparse: rows given from outside still send gradient to the key sets",
             "_sparse.py", 'total.view(-1).index_fill_(0, rows, float("inf"))', "total.view(-1)",
             "merged", SPARSE_TESTS),
    Mutation("bigbird: random blocks may repeat window blocks", "bigbird.py",
             "far = (i[:, None] - i[None, :]).abs() > window",
             "far = (i[:, None] - i[None, :]).abs() >= 0", "bigbird", SPARSE_TESTS),
    Mutation("bigbird: random blocks drawn among padding too", "bigbird.py",
             "~(far & eligible[:, None, None, :])", "~far", "bigbird", SPARSE_TESTS),
    Mutation("bigbird: padded keys of a random block get weight", "bigbird.py",
             "random_ok = block_ok[batch, idx] & ok[..., None]",
             "random_ok = (block_ok[batch, idx] | True) & ok[..., None]", "bigbird",
             SPARSE_TESTS),
    Mutation("bigbird: block ranks depend on the number of blocks", "bigbird.py",
             "x = _mix32(x ^ j)", "x = _mix32(x ^ j ^ num_blocks)", "bigbird", SPARSE_TESTS),
    Mutation("linformer: drop the padding zeroing before the projection (module)", "linformer.py",
             "x = x * real[..., None]", "x = x", "linformer"),
    Mutation("linformer: drop the padding zeroing before the projection (core)", "linformer.py",
             "k, v = k * keep, v * keep", "k, v = k, v", "linformer"),
    Mutation("sparse: key windows' backward keeps one block per window", "_sparse.py",
             "out[:, :, j:j + nb] += piece", "out[:, :, j:j + nb] = piece", "longformer"),
    Mutation("linear: token-layout backward without the denominator's Σφ(K) term", "linear.py",
             "grad_fq.addcmul_(grad_den, k_sum[:, None])", "grad_fq.mul_(1.0)",
             "linear or core_gradchecks", FAMILY_TESTS),
    Mutation("linear: fused backward without the denominator's Σφ(K) term", "linear.py",
             "g.div_(den_).addcmul_(grad_den_, k_sum[:, None])", "g.div_(den_)",
             "linear", FAMILY_TESTS),
    Mutation("linear: fused backward takes elu' of the keys as 1", "linear.py",
             "g.add_(grad_k_sum[:, None]).mul_(fk_.clamp(max=1.0))",
             "g.add_(grad_k_sum[:, None])", "linear", FAMILY_TESTS),
    Mutation("linear: fused forward counts padded keys", "linear.py",
             "no count\n            fk.masked_fill_(pad[:, :, None, None], 0.0)",
             "no count\n            pass", "linear", FAMILY_TESTS),
    Mutation("nystrom: fused module drops the value bias", "nystrom.py",
             "v_land = v_land + v_proj.bias.view(H, 1, d)", "v_land = v_land", "nystrom",
             FAMILY_TESTS),
    Mutation("nystrom: fused module drops b_q K̃ᵀ from kernel 1", "nystrom.py",
             "scores_1 += bias_1.flatten(1)[:, None]", "pass", "nystrom", FAMILY_TESTS),
]


def copy_src(tmp: Path) -> Path:
    """A copy of ``src/`` under ``tmp`` (without bytecode caches); returns the copy's root."""
    root = tmp / "src"
    shutil.copytree(REPO / "src", root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def apply(mutation: Mutation, src: Path) -> None:
    path = src / "attention_arena" / "attention" / mutation.path
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"mutation {mutation.name!r}: {mutation.old!r} occurs "
                         f"{text.count(mutation.old)} times in {mutation.path}, expected once; "
                         "update MUTATIONS in tools/mutation_check.py to match the code")
    path.write_text(text.replace(mutation.old, mutation.new))


def env_for(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}


def imported_from(src: Path) -> Path:
    """Where a subprocess with ``env_for(src)`` imports ``attention_arena`` from."""
    out = subprocess.run([sys.executable, "-c",
                          "import attention_arena; print(attention_arena.__file__)"],
                         env=env_for(src), cwd=REPO, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()).resolve()


def run_tests(src: Path, tests: str, select: str) -> tuple[int, str]:
    """pytest on the copy at ``src``: (exit code, its summary line)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", tests, "-q", "-x", "-p",
                           "no:cacheprovider", "-k", select],
                          env=env_for(src), cwd=REPO, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    return proc.returncode, (lines[-1].strip("= ") if lines else proc.stdout[-300:])


def check_the_copy_is_tested(mutations: list[Mutation]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = copy_src(Path(tmp))
        origin = imported_from(src)
        if not origin.is_relative_to(src.resolve()):
            raise SystemExit(f"the tests would import {origin}, not the copy in {src}")
        for tests in sorted({m.tests for m in mutations}):
            selects = sorted({m.select for m in mutations if m.tests == tests})
            rc, summary = run_tests(src, tests, " or ".join(f"({s})" for s in selects))
            if rc != 0:
                raise SystemExit(f"the unmutated copy fails {tests}: {summary}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if args.k in m.name]
    check_the_copy_is_tested(mutations)

    width = max(len(m.name) for m in mutations)
    print(f"{'mutation':{width}}  result    tests (-k)            pytest")
    survived = 0
    for m in mutations:
        with tempfile.TemporaryDirectory() as tmp:
            src = copy_src(Path(tmp))
            apply(m, src)
            rc, summary = run_tests(src, m.tests, m.select)
        verdict = {0: "SURVIVED", 1: "caught"}.get(rc, f"error {rc}")
        survived += verdict != "caught"
        print(f"{m.name:{width}}  {verdict:8}  {m.select:20}  {summary}", flush=True)
    print(f"{len(mutations) - survived}/{len(mutations)} caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
