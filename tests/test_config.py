import dataclasses
import subprocess
import sys

import pytest

from genjax import config as config_lib
from genjax.config import ConfigError
from genjax.train import TrainConfig
from experiments import vae_digits


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


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        config_lib.override(vae_digits.Config(), {"train.stepz": "3"})
    assert "train.stepz" in str(e.value) and "train.steps" in str(e.value) and "model.latent_dim" in str(e.value)


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
    bad = subprocess.run(cmd + ["--workdir", "/tmp/x", "--train.steps", "many"], capture_output=True, text=True)
    assert bad.returncode == 2 and "train.steps='many'" in bad.stderr


def test_parse_args_returns_workdir():
    cfg, args = config_lib.parse_args(vae_digits.Config(), ["--workdir", "w", "--model.latent_dim=3"])
    assert args.workdir == "w" and cfg.model.latent_dim == 3
    assert dataclasses.replace(cfg, model=vae_digits.Config().model) == vae_digits.Config()
