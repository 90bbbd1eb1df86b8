"""arena-explain on a tiny trained run: words, attributions (IG completeness), CLI errors, the
HTML page in a real headless browser, and the faithfulness test."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess

import pytest
import torch

from attention_arena.data.tokenizer import PAD_ID, BPETokenizer, ByteTokenizer
from attention_arena.explain import explain, group_into_words, load_run, to_words
from attention_arena.explain.cli import main
from attention_arena.explain.faithfulness import delete_words, faithfulness, faithfulness_table
from attention_arena.explain.run import RunError
from conftest import train_in_process

TEXT = "Shares in the bank rose 5% on Monday, après the results.\nAnalysts said profits grew."


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-layer TINY run (BPE, mean pooling by default) with its checkpoint and tokenizer."""
    run_dir = tmp_path_factory.mktemp("explain") / "run"
    with contextlib.redirect_stdout(io.StringIO()), pytest.MonkeyPatch.context() as mp:
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        train_in_process(run_dir, "model.num_layers=2", "attention=longformer",
                         "attention.window=16", "data.max_length=128")
    return load_run(run_dir)


# --------------------------------------------------------------------------- words
def test_bytes_are_grouped_into_words():
    tok = ByteTokenizer()
    text = "héllo  world, ok"
    spans = tok.char_spans(text)
    assert len(spans) == len(tok.encode(text)) - 1  # one per byte: é is two
    word_of, words = group_into_words(text, spans)
    assert [text[s:e] for s, e in words] == ["héllo", "world", ",", "ok"]
    assert word_of[:6] == [0] * 6  # h é(2 bytes) l l o
    assert word_of[6:8] == [1, 1]  # the two spaces go to the next word
    scores = to_words(torch.ones(len(word_of)), torch.tensor(word_of), len(words))
    assert scores.tolist() == [6.0, 7.0, 1.0, 3.0]  # bytes per word, spaces included


def test_bpe_tokens_are_grouped_into_words():
    tok = BPETokenizer.train([TEXT] * 20 + ["the bank said the results"] * 20, vocab_size=300)
    spans = tok.char_spans(TEXT)
    word_of, words = group_into_words(TEXT, spans)
    assert len(word_of) == len(tok.encode(TEXT)) - 1
    assert [TEXT[s:e] for s, e in words][:6] == ["Shares", "in", "the", "bank", "rose", "5"]
    assert len(words) == len(re.findall(r"\w+|[^\w\s]+", TEXT))
    for token, word in zip(spans, word_of, strict=True):  # a token lies in (or before) its word
        start, end = words[word]
        assert token[1] <= end and token[0] < end


def test_a_text_without_words_is_an_error():
    with pytest.raises(RunError, match="no words"):
        group_into_words("   \n ", [(0, 1)])


# --------------------------------------------------------------------------- attributions
def test_ig_is_complete_and_every_method_scores_every_word(tiny_run):
    doc = tiny_run.document(TEXT)
    ex = explain(tiny_run, doc, ("attention", "rollout", "ig", "shap", "lime"),
                 ig_steps=50, n_samples=40)
    assert abs(ex.ig_delta) <= 0.05 * abs(ex.ig_gap) + 1e-6
    # completeness recomputed here: the word scores sum to f(x) - f(PAD embeddings)
    assert abs(float(ex.words["ig"].sum()) - ex.ig_gap) <= 0.05 * abs(ex.ig_gap) + 1e-6
    for method, scores in ex.words.items():
        assert scores.shape == (doc.num_words,) and torch.isfinite(scores).all(), method
    assert 0.5 < float(ex.words["rollout"].sum()) <= 1 + 1e-6  # the rest went to CLS
    assert len(ex.maps) == 2 and ex.maps[0].shape[-1] == len(doc.ids) + 1
    assert torch.allclose(ex.probabilities.sum(), torch.tensor(1.0))


def test_deleting_words_pads_exactly_their_tokens(tiny_run):
    doc = tiny_run.document(TEXT)
    ids = delete_words(doc, torch.tensor([0, 3]))
    gone = (doc.word_of == 0) | (doc.word_of == 3)
    assert (ids[gone] == PAD_ID).all() and torch.equal(ids[~gone], doc.ids[~gone])


def test_faithfulness_reports_every_method_against_random(tiny_run):
    result = faithfulness(tiny_run, n=3, k=20, methods=("attention", "ig"), ig_steps=8,
                          log=None)
    assert result["n"] == 3 and set(result["summary"]) == {"attention", "ig", "random"}
    assert all(len(v) == 3 for v in result["drops"].values())
    assert "| longformer | ig |" in faithfulness_table([result])


# --------------------------------------------------------------------------- CLI errors
def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def test_clear_errors_for_bad_input(tiny_run, tmp_path):
    code, err = run_cli(str(tmp_path), "--text", "hello")
    assert code == 2 and "no checkpoint in" in err
    code, err = run_cli(str(tmp_path / "missing"), "--text", "hello")
    assert code == 2 and "does not exist" in err
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_run.directory / "checkpoints", no_tok / "checkpoints")
    code, err = run_cli(str(no_tok), "--text", "hello")
    assert code == 2 and "tokenizer" in err
    code, err = run_cli(str(tiny_run.directory), "--split", "test", "--index", "100000")
    assert code == 2 and "out of range" in err
    code, err = run_cli(str(tiny_run.directory), "--text", "  ")
    assert code == 2 and "empty" in err
    code, err = run_cli(str(tiny_run.directory), "--text", "hi", "--methods", "attention",
                        "--layer", "7", "--out", str(tmp_path / "o"))
    assert code == 2 and "--layer 7 is out of range" in err
    with pytest.raises(SystemExit):
        run_cli(str(tiny_run.directory), "--text", "hi", "--methods", "gradcam")


# --------------------------------------------------------------------------- the page
def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    text = tmp_path_factory.mktemp("doc") / "doc.txt"
    text.write_text(TEXT, encoding="utf-8")
    code, err = run_cli("--compare", str(tiny_run.directory), str(tiny_run.directory),
                        "--file", str(text), "--methods", "attention,rollout,ig",
                        "--out", str(out))
    assert code == 0, err
    return out


def test_the_report_is_self_contained(report):
    page = (report / "explain.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert page.count("data:image/png;base64,") == 2 * 3  # 2 runs x (2 layers + to-pooled)
    assert len(list(report.glob("*.png"))) == 3  # the same run twice: same files
    assert "Integrated Gradients" in page and "Predicted:" in page


def test_the_report_renders_in_a_headless_browser(report, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("ARENA_REQUIRE_BROWSER") == "1":
            pytest.fail("ARENA_REQUIRE_BROWSER=1 but chromium is not installed "
                        "(apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    url = (report / "explain.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    # the text, as the browser parsed it (words are in spans: compare without tags)
    visible = re.sub(r"<[^>]+>", "", dom)
    assert "Shares in the bank rose 5% on Monday, après the results." in visible
    check = re.search(r'id="image-check">images decoded: (\d+)/(\d+)<', dom)
    assert check, "the page's load script did not run"
    assert int(check.group(1)) == int(check.group(2)) == 6
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert len(widths) == 6 and min(widths) > 0
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, cwd=tmp_path)
    import matplotlib.image

    pixels = torch.from_numpy(matplotlib.image.imread(shot)[..., :3].copy())
    assert pixels.std() > 0.05  # not a blank page
    assert len(torch.unique(pixels.reshape(-1, 3), dim=0)) > 50  # text, shading, images
