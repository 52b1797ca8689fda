"""Flags built from dataclass configs: one default per setting, in the dataclass, and the same
`--config FILE` / `--print_config` behaviour in every command."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import yaml

from deferral.cli import SUBCOMMANDS as COMMANDS
from deferral.cli_args import config_fields, config_from_args
from inference.config import DecodeConfig
from inference.generate import DECODE_FLAGS_SKIPPED, decode_config
from training.logs.log_job import log_config
from training.logs.log_pipeline import LOG_FLAGS_SKIPPED, LogConfig

DECODE_COMMANDS = ("generate", "evaluate", "calibrate", "serve")
PARSED_COMMANDS = [name for name in COMMANDS if name != "train"]  # train is LightningCLI


def parser_of(command: str):
    return importlib.import_module(COMMANDS[command][0]).build_parser()


def defaults_of(command: str) -> dict:
    return vars(parser_of(command).get_defaults())


REQUIRED = {"log": ["--data", "d", "--out", "o"], "baselines": ["--data", "d"], "export": ["--out", "o"],
            "calibrate": ["--router", "r"]}


@pytest.mark.parametrize("command", DECODE_COMMANDS)
def test_decode_flags_default_to_decode_config(command):
    """Every DecodeConfig field is a flag of each decoding command, with the dataclass's default
    (calibrate's own, named in one place, where it decodes differently)."""
    from inference.calibrate_cli import CALIBRATION_DEFAULTS

    defaults = defaults_of(command)
    own = CALIBRATION_DEFAULTS if command == "calibrate" else {}
    for f in config_fields(DecodeConfig, skip=DECODE_FLAGS_SKIPPED):
        assert defaults[f.name] == own.get(f.name, f.default), (command, f.name)


def test_log_flags_default_to_log_config():
    defaults = defaults_of("log")
    for f in config_fields(LogConfig, skip=LOG_FLAGS_SKIPPED):
        assert defaults[f.name] == f.default, f.name


def test_configs_come_back_from_the_flags():
    args = parser_of("generate").parse_args(["--prompt", "x", "--draft-tokens", "3", "--temperature", "0.5",
                                              "--draft-schedule", "heuristic"])
    assert decode_config(args) == DecodeConfig(draft_tokens=3, temperature=0.5, draft_schedule="heuristic")
    args = parser_of("log").parse_args(["--data", "stdlib", "--out", "o", "--mode", "cascade", "--horizon", "8"])
    cfg = log_config(args)
    assert cfg == dataclasses.replace(LogConfig(), mode="cascade", horizon=8, generator="speculative")
    with pytest.raises(TypeError):  # a name the dataclass lacks is an error, not silently dropped
        config_from_args(DecodeConfig, args, horizon=8)


@pytest.mark.parametrize("command", PARSED_COMMANDS)
def test_every_command_prints_and_reads_its_config(command, tmp_path, capsys):
    """--print_config prints every setting as YAML; that file fed back with --config parses."""
    parser = parser_of(command)
    with pytest.raises(SystemExit) as done:
        parser.parse_args([*REQUIRED.get(command, []), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "device" in printed or "out" in printed or "router" in printed, printed
    if command in DECODE_COMMANDS:
        assert printed["draft_tokens"] == DecodeConfig().draft_tokens
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in printed.items() if v is not None}))
    parser.parse_args(["--config", str(path)])


def test_the_shipped_configs_leave_mode_dependent_defaults_to_the_code():
    """configs/log.yaml with --mode cascade logs speculative decoding's blocks, as the flag alone does
    (a config that pinned the generator would refuse cascade mode)."""
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "configs" / "log.yaml"
    args = parser_of("log").parse_args(["--config", str(config), "--mode", "cascade"])
    assert log_config(args).generator == "speculative"
    args = parser_of("log").parse_args(["--config", str(config)])
    assert log_config(args).generator == "target"


def test_every_flag_is_a_dataclass_field():
    """One style for every command but train (LightningCLI): flags come from typed dataclass fields
    (add_config_flags), so no module writes a flag, its type or its default by hand (--config aside)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    by_hand = {
        str(path.relative_to(root)): found
        for package in ("deferral", "inference", "training")
        for path in sorted((root / package).rglob("*.py"))
        if (found := re.findall(r'add_argument\(\s*"(--[\w-]+)"', path.read_text())) and found != ["--config"] * len(found)
    }
    assert by_hand == {}


def test_train_reads_tracking_uri_wherever_it_stands():
    """`deferral train` takes --tracking-uri like every command: before or after the subcommand, and
    after a --config file whose value it overrides."""
    from training.router.cli import tracking_alias

    expected = ["fit", "--config", "c.yaml", "--mlflow.tracking_uri", "none"]
    assert tracking_alias(["--tracking-uri", "none", "fit", "--config", "c.yaml"]) == expected
    assert tracking_alias(["fit", "--tracking-uri=none", "--config", "c.yaml"]) == expected
    assert tracking_alias(["fit", "--config", "c.yaml"]) == ["fit", "--config", "c.yaml"]
