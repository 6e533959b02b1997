"""Config files for commands: --config FILE (keys = long option names; the command line overrides it) and
--print-config (the effective configuration as such a file)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from smoothcore.cli import cli

COMMANDS = {
    "train-classifier": ["--sigma", "0.5", "--epochs", "2", "--out", "x"],
    "train-denoiser": ["--sigma", "0.5", "--out", "x"],
    "certify": ["RUN", "--n", "1000", "--radii", "0.5,1", "--noise-param", "tail=3"],
    "audit": ["RUN", "--tag", "t"],
    "sweep": ["--noises", "dssn", "--sigmas", "0.5,1", "--epochs", "2"],
}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("command", COMMANDS)
def test_print_config_then_config_gives_the_same_configuration(command, tmp_path):
    printed = invoke(command, *COMMANDS[command], "--print-config")
    assert printed.exit_code == 0, printed.output
    (tmp_path / "c.toml").write_text(printed.output)
    args = [a for a in COMMANDS[command] if a == "RUN"]
    again = invoke(command, *args, "--config", str(tmp_path / "c.toml"), "--print-config")
    assert again.exit_code == 0, again.output
    assert again.output == printed.output


def test_the_command_line_overrides_the_file_and_json_works_too(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"sigma": 0.25, "epochs": 7, "batch_size": 32, "out": "x"}))
    out = invoke("train-classifier", "--config", str(tmp_path / "c.json"), "--epochs", "3", "--print-config")
    assert out.exit_code == 0, out.output
    assert (
        "sigma = 0.25\n" in out.output and "epochs = 3\n" in out.output and "batch-size = 32\n" in out.output
    )


def test_unknown_keys_and_unreadable_files_are_refused_naming_the_options(tmp_path):
    (tmp_path / "c.toml").write_text("sigma = 0.5\nepoch = 3\n")
    bad = invoke("train-classifier", "--config", str(tmp_path / "c.toml"))
    assert bad.exit_code == 2 and "epoch is not an option of `train-classifier`" in bad.output
    assert "epochs" in bad.output and "Traceback" not in bad.output
    (tmp_path / "broken.toml").write_text("sigma = = 1")
    broken = invoke("certify", "RUN", "--config", str(tmp_path / "broken.toml"))
    assert broken.exit_code == 2 and "not a readable config file" in broken.output
    missing = invoke("certify", "RUN", "--config", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_a_training_from_a_config_file_is_the_training_from_its_options(tiny_idx_dir, tmp_path):
    flags = [
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(tiny_idx_dir),
        "--model",
        "cnn",
        "--noise",
        "dssn",
    ]
    flags += ["--sigma", "0.5", "--epochs", "1", "--batch-size", "32", "--eval-limit", "8"]
    printed = invoke("train-classifier", *flags, "--out", str(tmp_path / "a"), "--print-config")
    (tmp_path / "c.toml").write_text(printed.output.replace(str(tmp_path / "a"), str(tmp_path / "b")))
    assert invoke("train-classifier", *flags, "--out", str(tmp_path / "a")).exit_code == 0
    assert invoke("train-classifier", "--config", str(tmp_path / "c.toml")).exit_code == 0
    config_a = json.loads((tmp_path / "a" / "config.json").read_text())
    config_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config_a == config_b
    assert (tmp_path / "a" / "train_log.csv").read_text().split("\n")[1].split(",")[:4] == (
        tmp_path / "b" / "train_log.csv"
    ).read_text().split("\n")[1].split(",")[:4]
