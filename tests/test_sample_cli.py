"""`python -m genjax.sample WORKDIR`: every option checked before compiling (exit 2, one line naming the
value), the run's own options and defaults in --help, .npy / .png outputs, chunked sampling, Ctrl-C.

Runs `genjax.sample.main` in this process (compiled samplers are reused across tests) on the shared tiny
runs of tests/test_workdir.py; the Ctrl-C test starts a real `python -m genjax.sample` process.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from genjax import log, sample as sample_cli
from genjax.models import diffusion
from tests.test_workdir import save_untrained_run, tiny_config, tiny_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> workdir: the shared vae, conditional diffusion and gpt runs, and an unconditional diffusion
    run (initial weights: only its options are checked here)."""
    out = {kind: tiny_run(kind, tmp_path_factory)[0] for kind in ("vae", "diffusion", "gpt")}
    cfg = tiny_config("diffusion", tmp_path_factory, **{"model.num_classes": "0"})
    out["uncond"] = save_untrained_run(str(tmp_path_factory.mktemp("uncond")), cfg, "diffusion_digits", diffusion)
    return out


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m genjax.sample ARGV`, in this process."""
    capsys.readouterr()
    try:
        code = sample_cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- refused options


REFUSED = [  # (run, options, what the one error line must say)
    ("vae", ["--num", "-1"], "--num -1 must be >= 1"),
    ("vae", ["--num", "0"], "--num 0 must be >= 1"),
    ("vae", ["--batch_size", "0"], "--batch_size 0 must be >= 1"),
    ("vae", ["--out", "{tmp}/missing/x.npy"], "/missing does not exist"),
    ("vae", ["--out", "{tmp}/a_file/x.npy"], "/a_file does not exist (or is a file)"),
    ("vae", ["--out", "{tmp}/x.txt"], "x.txt: images are written as .npy or .png"),
    ("vae", ["--out", "{tmp}/folder.npy"], "folder.npy is a folder"),
    ("vae", ["--temperature", "0"], "temperature=0.0 must be > 0"),
    ("vae", ["--temperature", "nan"], "temperature='nan': expected a finite number"),
    ("vae", ["--sampler", "ddim"], "--sampler is not an option of vae runs"),
    ("diffusion", ["--prompt", "hello"], "--prompt is not an option of diffusion runs"),
    ("diffusion", ["--sampler", "foo"], "sampler='foo' is not one of"),
    ("diffusion", ["--steps", "0"], "steps=0 must be >= 1"),
    ("diffusion", ["--steps", "1001"], "steps=1001 exceeds the model's 1000 trained noise levels"),
    ("diffusion", ["--labels", "3,11"], "labels [11] are out of range: use 0..10"),
    ("diffusion", ["--eta", "2"], "eta=2.0 must be in [0, 1]"),
    ("uncond", ["--guidance", "2"], "guidance=2.0 needs a class-conditional model"),
    ("uncond", ["--labels", "1"], "labels were given but the model is unconditional"),
    ("gpt", ["--length", "0"], "length=0 must be >= 1"),
    ("gpt", ["--length", "-1"], "length=-1 must be >= 1"),
    ("gpt", ["--top_p", "2"], "top_p=2.0 must be in (0, 1]"),
    ("gpt", ["--top_k", "-1"], "top_k=-1 must be >= 0"),
    ("gpt", ["--temperature", "0"], "temperature=0.0 must be > 0"),
    ("gpt", ["--prompt", "Quick"], "prompt 'Quick'"),
    ("gpt", ["--out", "{tmp}/x.png"], "x.png: tokens are written as .txt or .npy"),
]


@pytest.mark.parametrize("kind,options,needle", REFUSED, ids=[f"{k}{' '.join(o)}" for k, o, _ in REFUSED])
def test_bad_option_is_one_line_before_compiling(kind, options, needle, runs, tmp_path, capsys, monkeypatch):
    def compiled(*args, **kwargs):
        raise AssertionError("the sampler was compiled before the options were checked")

    monkeypatch.setattr(sample_cli, "_draw", compiled)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "folder.npy").mkdir()
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    code, out, err = run([runs[kind], *options], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "usage:" not in err, err
    assert needle in err, err
    assert "compiling" not in err and out == ""
    assert not (tmp_path / "missing").exists()  # --out never creates folders
    assert sorted(os.listdir(tmp_path)) == ["a_file", "folder.npy"]  # and writes nothing
    if kind == "gpt" and options[0] == "--prompt":
        assert "'Q'" in err  # names the character the tokenizer lacks


def test_help_lists_the_runs_own_options_with_defaults(runs, capsys):
    common = ["--num", "--out", "--seed", "--batch_size", "--no_ema"]
    expected = {
        "vae": (["--temperature", "default: 1.0"], ["--sampler", "--prompt", "--length"]),
        "diffusion": (["--sampler", "default: dpm++2m", "--steps", "default: 20", "--guidance", "--eta",
                       "--spacing", "--labels"], ["--temperature", "--prompt"]),
        "gpt": (["--prompt", "--length", "default: 256", "--temperature", "--top_k", "default: 0", "--top_p",
                 "--greedy"], ["--sampler", "--stop_token"]),
    }
    for kind, (listed, absent) in expected.items():
        code, out, _ = run([runs[kind], "--help"], capsys)
        assert code == 0
        options = out[out.index("options:"):]  # past the usage examples of the description
        for option in common + listed:
            assert option in options, (kind, option)
        for option in absent:
            assert not re.search(rf"{option}\b", options), (kind, option)


# ----------------------------------------------------------------------------- outputs


def test_npy_and_png_outputs(runs, tmp_path, capsys):
    from PIL import Image

    npy, png = str(tmp_path / "s.npy"), str(tmp_path / "s.png")
    assert run([runs["vae"], "--num", "6", "--out", npy], capsys)[0] == 0
    samples = np.load(npy)
    assert samples.shape == (6, 8, 8, 1) and samples.dtype == np.float32
    assert 0.0 <= samples.min() and samples.max() <= 1.0 and samples.std() > 0
    assert run([runs["vae"], "--num", "6", "--out", png], capsys)[0] == 0
    grid = np.asarray(Image.open(png))
    np.testing.assert_array_equal(grid, log.image_grid(samples, scale=8))  # the same 6 samples, as a grid
    assert sorted(os.listdir(tmp_path)) == ["s.npy", "s.png"]  # no temporary files left


def test_chunks_depend_on_seed_and_batch_size_only(runs, tmp_path, capsys):
    def draw(num, batch, seed=0):
        out = str(tmp_path / f"{num}_{batch}_{seed}.npy")
        code, _, err = run([runs["vae"], "--num", str(num), "--batch_size", str(batch), "--seed", str(seed),
                            "--out", out], capsys)
        assert code == 0, err
        return np.load(out)

    ten = draw(10, 4)
    assert ten.shape == (10, 8, 8, 1)
    np.testing.assert_array_equal(ten[:4], draw(4, 4))
    np.testing.assert_array_equal(ten[:8], draw(8, 4))
    assert not np.allclose(ten[:4], ten[4:8])  # each chunk draws its own samples
    assert not np.allclose(ten, draw(10, 4, seed=1))


def test_top_k_spellings_and_prompt(runs, capsys):
    outs = []
    for options in (["--top-k", "1"], ["--top_k", "1"], ["--greedy", "true"]):
        code, out, err = run([runs["gpt"], "--prompt", "the ", "--length", "12", "--seed", "3", *options], capsys)
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]  # top_k=1 is greedy decoding: the option took effect
    assert outs[0].startswith("the ") and len(outs[0].rstrip("\n")) <= 4 + 12


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_exits_130_at_once_keeping_finished_samples(runs, tmp_path):
    out = str(tmp_path / "s.npy")
    proc = subprocess.Popen([sys.executable, "-m", "genjax.sample", runs["vae"], "--num", "100000000",
                             "--batch_size", "64", "--out", out], stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        os.set_blocking(proc.stderr.fileno(), False)
        err, deadline = b"", time.monotonic() + 240
        while not re.search(rb"\b[1-9]\d*/100000000\b", err):  # the progress bar shows finished samples
            assert proc.poll() is None and time.monotonic() < deadline, err.decode()[-2000:]
            time.sleep(0.05)
            err += proc.stderr.read() or b""
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # a hang fails the elapsed assertion below, with the process's output
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    os.set_blocking(proc.stderr.fileno(), True)
    err = (err + proc.stderr.read()).decode()
    assert proc.returncode == 130, err[-2000:]
    assert elapsed < 3.0, elapsed
    match = re.search(r"genjax: interrupted; the (\d+) finished samples went to (\S+)", err)
    assert match and match.group(2) == out, err[-2000:]
    kept = np.load(out)
    assert kept.shape == (int(match.group(1)), 8, 8, 1) and len(kept) % 64 == 0 and len(kept) > 0
