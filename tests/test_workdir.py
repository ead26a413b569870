"""The workdir record: a refused resume writes nothing, `--config W/config.json` repeats (and extends) a run.

Also home of `tiny_run`: tiny trained runs of vae_digits, diffusion_digits (conditional) and gpt_text,
trained once per test session and shared by the modules that only read them (test_sample_cli,
test_vae, test_diffusion, test_gpt_text). A test that changes a run works on a copy (`copy_run`).
"""

import hashlib
import json
import os
import shutil

import jax
import optax
import pytest

from experiments import diffusion_digits, gpt_text, vae_digits
from genjax import checkpoint, config as config_lib, experiment, log, sample as sample_cli, train
from genjax.config import ConfigError

# Settings of the shared runs. vae: cosine schedule (the default); diffusion: conditional, 8 simulated
# devices (conftest), EMA; gpt: a small corpus so that data preparation and evaluation are quick.
TINY = {
    "vae": (vae_digits, {
        "train.steps": "2", "train.batch_size": "16", "train.log_every": "1", "train.eval_every": "1",
        "train.sample_every": "2", "train.ckpt_every": "1", "train.num_devices": "1", "model.hidden": "16",
        "model.latent_dim": "2", "model.iwae_samples": "4", "num_quality_samples": "32"}),
    "diffusion": (diffusion_digits, {
        "train.steps": "2", "train.batch_size": "16", "train.log_every": "1", "train.eval_every": "2",
        "train.sample_every": "2", "train.ckpt_every": "1", "eval_repeats": "1", "num_quality_samples": "100",
        "sample.steps": "2", "model.channels": "8", "model.num_groups": "4", "model.channel_mults": "1",
        "model.attn_resolutions": "", "model.num_classes": "10", "grid_guidance": "0"}),
    "gpt": (gpt_text, {
        "train.steps": "2", "train.batch_size": "8", "train.log_every": "1", "train.eval_every": "2",
        "train.sample_every": "2", "train.ckpt_every": "2", "train.num_devices": "1", "eval_blocks": "8",
        "sample.length": "8", "model.n_layer": "1", "model.d_model": "32", "model.n_head": "2",
        "model.block_size": "16"}),
}


def corpus(tmp_path_factory) -> str:
    """A ~10k-character lowercase text file (no capitals: 'Q' is outside its alphabet)."""
    path = tmp_path_factory.getbasetemp() / "genjax_tiny_corpus.txt"
    if not path.exists():
        words = "the quick brown fox jumps over a lazy dog, and then it runs home again.".split()
        path.write_text("\n".join(" ".join(words[(i + j) % len(words)] for j in range(9)) for i in range(200)))
    return str(path)


def tiny_config(kind: str, tmp_path_factory, **overrides):
    module, settings = TINY[kind]
    settings = {**settings, **({"data": corpus(tmp_path_factory)} if kind == "gpt" else {}), **overrides}
    return config_lib.override(module.Config(), settings)


def tiny_run(kind: str, tmp_path_factory) -> tuple[str, dict]:
    """(workdir, summary) of the shared tiny `kind` run, trained on first use in this session."""
    workdir = tmp_path_factory.getbasetemp() / "genjax_tiny_runs" / kind
    if (workdir / "summary.json").exists():
        return str(workdir), json.loads((workdir / "summary.json").read_text())
    shutil.rmtree(workdir, ignore_errors=True)  # a run that failed half-way is trained again
    module, _ = TINY[kind]
    summary = module.train_and_evaluate(tiny_config(kind, tmp_path_factory), str(workdir))
    return str(workdir), summary


def copy_run(kind: str, tmp_path_factory, dest) -> str:
    shutil.copytree(tiny_run(kind, tmp_path_factory)[0], dest)
    return str(dest)


def save_untrained_run(workdir: str, cfg, name: str, family) -> str:
    """A workdir of experiment `name` holding `cfg`'s config.json and a step-0 checkpoint of freshly
    initialized weights (for what reads a run without training it: the sample CLI)."""
    config_lib.save(cfg, workdir, experiment=name, family=family.__name__.split(".")[-1])
    params = family.init(jax.random.key(0), cfg.model)
    saver = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    saver.save(train.init_state(jax.random.key(1), params, optax.sgd(0.1)), wait=True)
    saver.close()
    return workdir


def tree(folder) -> dict[str, str]:
    """relative path -> sha256 of every file (and '/' for every folder) under `folder`."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder) + "/"] = ""
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run_main(kind: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python experiments/<experiment>.py ARGV`, in this process."""
    module, _ = TINY[kind]
    capsys.readouterr()
    try:
        module_summary = experiment.main(module.Config(), module.train_and_evaluate, module.__doc__, argv)
        code = 0 if isinstance(module_summary, dict) else 1
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- refused resumes


def test_resume_with_another_model_is_refused_and_writes_nothing(tmp_path, tmp_path_factory, capsys):
    workdir = copy_run("gpt", tmp_path_factory, tmp_path / "gpt")
    before = tree(workdir)
    code, _, err = run_main("gpt", ["--workdir", workdir, "--config", os.path.join(workdir, "config.json"),
                                    "--model.n_layer", "2"], capsys)
    assert code == 2
    line = error_line(err)
    assert "model.n_layer=1" in line and "not 2" in line and "cannot change its model" in line, line
    assert "--config" in line  # how to resume instead
    assert tree(workdir) == before
    # the run still samples: `python -m genjax.sample W` after the refused resume
    capsys.readouterr()
    assert sample_cli.main([workdir, "--length", "8"]) == 0
    assert len(capsys.readouterr().out.strip()) >= 8


def test_resume_with_another_schedule_is_refused_and_writes_nothing(tmp_path, tmp_path_factory, capsys):
    workdir = copy_run("vae", tmp_path_factory, tmp_path / "vae")
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["config"]["train"]["schedule"] == "cosine"
    before = tree(workdir)
    code, _, err = run_main("vae", ["--workdir", workdir, "--config", os.path.join(workdir, "config.json"),
                                    "--train.schedule", "constant"], capsys)
    assert code == 2
    line = error_line(err)
    assert "train.schedule='cosine'" in line and "'constant'" in line, line
    assert "cannot change its optimizer, schedule or batch" in line, line
    assert tree(workdir) == before


def test_resumable_names_cover_nested_options(tmp_path):
    """A RESUMABLE entry naming a nested config (gpt_text's `sample`) lets every field under it change
    on resume; a model field still may not."""
    workdir = str(tmp_path / "run")
    base = gpt_text.Config()
    config_lib.save(base, workdir, experiment="gpt_text", family="transformer")
    os.makedirs(os.path.join(workdir, "checkpoints", "10"))
    longer = config_lib.override(base, {"sample.length": str(base.sample.length + 5)})
    experiment.check_workdir(longer, workdir, experiment="gpt_text")  # no error
    with pytest.raises(ConfigError, match="model.n_layer"):
        experiment.check_workdir(config_lib.override(base, {"model.n_layer": "7"}), workdir, experiment="gpt_text")


def test_text_run_in_an_image_workdir_writes_nothing(tmp_path, tmp_path_factory, capsys):
    workdir = copy_run("vae", tmp_path_factory, tmp_path / "vae")
    before = tree(workdir)
    code, _, err = run_main("gpt", ["--workdir", workdir, "--data", corpus(tmp_path_factory),
                                    "--train.steps", "2"], capsys)
    assert code == 2
    line = error_line(err)
    assert "'vae_digits' run, not 'gpt_text'" in line, line
    assert not os.path.exists(os.path.join(workdir, "data"))
    assert not os.path.exists(os.path.join(workdir, "tokenizer.json"))
    assert tree(workdir) == before


def test_fresh_text_run_refused_for_its_batch_leaves_no_workdir(tmp_path, tmp_path_factory, capsys):
    workdir = str(tmp_path / "fresh")
    code, _, err = run_main("gpt", ["--workdir", workdir, "--data", corpus(tmp_path_factory),
                                    "--train.batch_size", "100000"], capsys)
    assert code == 2
    line = error_line(err)
    assert "train.batch_size=100,000 is larger than" in line, line
    assert not os.path.exists(workdir)


# ----------------------------------------------------------------------------- resuming through --config


def test_config_json_resumes_and_extends_the_run(tmp_path, tmp_path_factory, capsys):
    workdir = copy_run("gpt", tmp_path_factory, tmp_path / "gpt")
    record = json.loads(open(os.path.join(workdir, "config.json")).read())
    code, _, err = run_main("gpt", ["--workdir", workdir, "--config", os.path.join(workdir, "config.json"),
                                    "--train.steps", "4"], capsys)
    assert code == 0, err[-3000:]
    # resumed at step 2 (steps 1 and 2 are not trained again) and went on to 4
    assert [r["step"] for r in log.read_metrics(workdir, "train")] == [1, 2, 3, 4]
    assert json.loads(open(os.path.join(workdir, "summary.json")).read())["steps"] == 4
    # the same run: only its length changed
    after = json.loads(open(os.path.join(workdir, "config.json")).read())
    assert after["config"]["train"].pop("steps") == 4 and record["config"]["train"].pop("steps") == 2
    assert after == record
