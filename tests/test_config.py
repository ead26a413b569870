import dataclasses
import json
import subprocess
import sys

import pytest

from experiments import diffusion_digits, gan_digits, gpt_text, vae_digits
from genjax import config as config_lib, experiment
from genjax.config import ConfigError
from genjax.train import TrainConfig


def test_override_converts_types_and_nested_keys():
    cfg = config_lib.override(vae_digits.Config(), {
        "train.steps": "7", "train.lr": "0.5", "model.hidden": "8,4", "model.arch": "conv",
        "train.on_nonfinite": "skip", "data": "mnist"})
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 0.5
    assert cfg.model.hidden == (8, 4)
    assert cfg.model.arch == "conv"
    assert cfg.data == "mnist"


@pytest.mark.parametrize("key,value,needle", [
    ("train.steps", "ten", "expected an int"),
    ("train.steps", "1.5", "expected an int"),
    ("train.lr", "fast", "expected a float"),
    ("model.arch", "resnet", "not one of"),
    ("train.on_nonfinite", "ignore", "not one of"),
    ("model.hidden", "8,x", "expected an int"),
    ("train.batch_size", "0", ">= 1"),
])
def test_bad_values_are_rejected_with_the_key(key, value, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        config_lib.override(vae_digits.Config(), {key: value})
    assert key in str(e.value)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError) as e:
        config_lib.override(vae_digits.Config(), {"train.stepz": "3"})
    assert str(e.value) == "unknown config key 'train.stepz'; did you mean train.steps?"
    with pytest.raises(ConfigError) as e:  # nothing close: no suggestion
        config_lib.override(vae_digits.Config(), {"zzz": "3"})
    assert str(e.value) == "unknown config key 'zzz'"


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="grad_accum"):
        config_lib.override(TrainConfig(), {"batch_size": "10", "grad_accum": "3"})


def test_json_round_trip(tmp_path):
    cfg = config_lib.override(vae_digits.Config(), {"model.hidden": "3,2", "train.steps": "5"})
    config_lib.save(cfg, str(tmp_path), experiment="vae_digits", family="vae")
    record = config_lib.load(str(tmp_path))
    assert record["family"] == "vae"
    assert config_lib.from_dict(vae_digits.Config, record["config"]) == cfg


def test_cli_help_lists_every_option_and_rejects_unknown():
    cmd = [sys.executable, "experiments/vae_digits.py"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    for key in config_lib.flatten(vae_digits.Config()):
        assert f"--{key}" in out
    assert "default: 10000" in out  # train.steps
    bad = subprocess.run(cmd + ["--workdir", "/tmp/x", "--train.stepz", "3"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "--train.stepz" in bad.stderr and "--train.steps" in bad.stderr


def test_bad_value_exits_2_naming_it(capsys):
    code, _, err = cli(vae_digits, ["--workdir", "/tmp/x", "--train.steps", "many"], capsys)
    assert code == 2 and "train.steps='many': expected an int" in one_line(err)


def test_parse_args_returns_workdir():
    cfg, args = config_lib.parse_args(vae_digits.Config(), ["--workdir", "w", "--model.latent_dim=3"])
    assert args.workdir == "w" and cfg.model.latent_dim == 3
    assert dataclasses.replace(cfg, model=vae_digits.Config().model) == vae_digits.Config()


# ----------------------------------------------------------------------------- the experiment command line


def cli(module, argv, capsys):
    """(exit status, stdout, stderr) of `python experiments/<module>.py ARGV`, run in this process; the
    experiment itself must not start."""

    def started(cfg, workdir):
        raise AssertionError(f"the run started with {cfg}")

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        experiment.main(module.Config(), started, module.__doc__, argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def resolve(module, argv):
    """The config `python experiments/<module>.py ARGV` would run with."""
    seen = []
    experiment.main(module.Config(), lambda cfg, workdir: seen.append(cfg) or {}, module.__doc__, argv)
    return seen[0]


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "usage:" not in err, err
    return err


def test_unknown_option_is_one_line_with_a_suggestion(tmp_path, capsys):
    workdir = tmp_path / "w"
    code, _, err = cli(vae_digits, ["--workdir", str(workdir), "--train.batch_sise", "8"], capsys)
    assert code == 2 and not workdir.exists()
    assert one_line(err) == "error: unknown option --train.batch_sise; did you mean --train.batch_size? (see --help)\n"


def test_dashes_and_underscores_alike_in_option_names():
    cfg = resolve(vae_digits, ["--workdir", "w", "--train.batch-size", "8", "--model.latent-dim=3"])
    assert cfg.train.batch_size == 8 and cfg.model.latent_dim == 3


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_floats_are_refused(value, capsys):
    code, _, err = cli(vae_digits, ["--workdir", "w", f"--train.lr={value}"], capsys)
    assert code == 2
    assert f"train.lr='{value}': expected a finite number" in one_line(err)


def test_choices_in_any_case_and_lowercase_in_help(capsys):
    cfg = resolve(vae_digits, ["--workdir", "w", "--train.schedule", "COSINE", "--model.arch", "Conv"])
    assert cfg.train.schedule == "cosine" and cfg.model.arch == "conv"
    code, out, _ = cli(vae_digits, ["--help"], capsys)
    assert code == 0
    assert "--train.schedule 'constant'|'cosine'" in out and "'mlp'|'conv'" in out
    assert "COSINE" not in out and "CONSTANT" not in out


@pytest.mark.parametrize("module,key,value", [
    (vae_digits, "model.image_shape", "28,28,1"), (diffusion_digits, "model.image_shape", "8,8,1"),
    (gan_digits, "model.image_shape", "8,8,1"), (gpt_text, "model.vocab_size", "65")])
def test_keys_taken_from_the_data_are_refused(module, key, value, tmp_path, capsys):
    code, _, err = cli(module, ["--workdir", str(tmp_path / "w"), f"--{key}", value], capsys)
    assert code == 2 and not (tmp_path / "w").exists()
    assert f"{key} is taken from the data" in one_line(err)
    # in a config file (e.g. another run's config.json) the data's value is ignored instead
    section, field = key.split(".")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({section: {field: [1, 2, 3] if field == "image_shape" else 3}}))
    assert resolve(module, ["--workdir", "w", "--config", str(path)]) == module.Config()


CONFIG = {"train": {"steps": 7, "lr": 0.01}, "model": {"latent_dim": 3, "hidden": [8, 4]}, "data": "digits"}


def test_config_file_json_and_yaml_then_the_command_line(tmp_path):
    import yaml

    (tmp_path / "c.json").write_text(json.dumps(CONFIG))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    for name in ("c.json", "c.yaml"):
        cfg = resolve(vae_digits, ["--workdir", "w", "--config", str(tmp_path / name), "--train.steps", "9"])
        assert cfg.train.steps == 9  # the command line overrides the file
        assert (cfg.train.lr, cfg.model.latent_dim, cfg.model.hidden) == (0.01, 3, (8, 4))
        assert cfg.train.batch_size == vae_digits.Config().train.batch_size  # the rest: defaults


def test_config_file_from_a_workdir_repeats_its_run(tmp_path):
    cfg = config_lib.override(vae_digits.Config(), {
        "train.steps": "5", "train.schedule": "constant", "model.arch": "conv", "num_quality_samples": "7"})
    config_lib.save(cfg, str(tmp_path / "run"), experiment="vae_digits", family="vae")
    assert resolve(vae_digits, ["--workdir", "w", "--config", str(tmp_path / "run" / "config.json")]) == cfg


@pytest.mark.parametrize("content,needle", [
    (None, "cannot read it"),
    ('{"train": {"stepz": 3}}', "unknown config key 'train.stepz'; did you mean train.steps?"),
    ('{"train": {"lr": NaN}}', "expected a finite number"),
    ('{"train": ', "not valid JSON"),
    ("[1, 2]", "expected a mapping of config keys"),
])
def test_bad_config_file_is_one_line(content, needle, tmp_path, capsys):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    code, _, err = cli(vae_digits, ["--workdir", str(tmp_path / "w"), "--config", str(path)], capsys)
    assert code == 2 and not (tmp_path / "w").exists()
    assert needle in one_line(err)
    if content is None or not content.startswith('{"train": {'):  # a problem of the file itself names it
        assert f"--config {path}" in err


def test_print_config_prints_the_resolved_config_and_creates_nothing(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps(CONFIG))
    workdir = tmp_path / "w"
    code, out, err = cli(vae_digits, ["--config", str(tmp_path / "c.json"), "--train.steps", "11", "--print_config",
                                      "--workdir", str(workdir)], capsys)
    assert code == 0 and err == ""
    expected = config_lib.override(vae_digits.Config(), {"train.steps": "11", "train.lr": "0.01",
                                                         "model.latent_dim": "3", "model.hidden": "8,4"})
    assert json.loads(out) == json.loads(json.dumps(config_lib.to_dict(expected)))
    assert not workdir.exists()
    code, out, _ = cli(vae_digits, ["--print_config"], capsys)  # no --workdir needed
    assert code == 0 and json.loads(out)["train"]["steps"] == vae_digits.Config().train.steps
