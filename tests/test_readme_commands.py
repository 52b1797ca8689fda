"""Every `deferral` example command in the README runs as written, in README order, in a fresh
working directory, on the tiny pair and shrunk to seconds.

Shrinking appends flags (the last value of a flag wins): the tiny pair (given a chat template) for
commands that load models, and SHRINK's limits per command. `deferral serve` is left out here (it
listens until stopped: tests/test_serve.py starts it), and so are the set-up lines with `pip`
(CI runs them) and `deferral demo` (tests/test_demo.py).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from deferral.cli import main as deferral

ROOT = Path(__file__).resolve().parent.parent
SHRINK = {
    "generate": ["--max-new-tokens", "4"],
    "log": ["--max-docs", "4", "--max-len", "96", "--no-tracking", "--no-progress"],
    "train": ["--trainer.max_epochs", "1", "--mlflow.tracking_uri", "none"],
    "calibrate": ["--limit", "2", "--max-new-tokens", "4", "--max-rounds", "1"],
    "evaluate": ["--limit", "1", "--max-new-tokens", "4", "--no-mlflow", "--timing-repeats", "1", "--threads", "1"],
}
PAIR_COMMANDS = ("generate", "log", "calibrate", "evaluate")
SKIPPED = ("serve", "demo")
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def readme_commands() -> list[list[str]]:
    """argv of every `deferral ...` line in the README's bash blocks (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("deferral "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def chat_pair(tiny_dir: Path, out: Path) -> tuple[str, str]:
    """Copies of the tiny drafter and target whose shared tokenizer has a chat template, with a context
    long enough for HumanEval prompts (the models use rotary positions: any length runs)."""
    paths = []
    for role in ("drafter", "target"):
        shutil.copytree(tiny_dir / role, out / role)
        config = out / role / "tokenizer_config.json"
        settings = json.loads(config.read_text())
        settings["chat_template"] = CHAT_TEMPLATE
        config.write_text(json.dumps(settings))
        model_config = out / role / "config.json"
        settings = json.loads(model_config.read_text())
        settings["max_position_embeddings"] = 2048
        model_config.write_text(json.dumps(settings))
        paths.append(str(out / role))
    return paths[0], paths[1]


def test_readme_lists_the_commands_this_test_runs():
    names = [argv[0] for argv in readme_commands()]
    assert {"generate", "log", "train", "evaluate", "serve"} <= set(names)


def test_every_readme_command_runs_as_written(tiny_dir, tmp_path, monkeypatch, capsys):
    drafter, target = chat_pair(tiny_dir, tmp_path / "pair")
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")  # the README runs from the checkout
    (work / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(work)
    ran = []
    for argv in readme_commands():
        if argv[0] in SKIPPED:
            continue
        extra = (["--drafter", drafter, "--target", target] if argv[0] in PAIR_COMMANDS else []) + SHRINK.get(argv[0], [])
        rc = deferral([*argv, *extra])
        err = capsys.readouterr().err
        assert rc == 0, f"`deferral {shlex.join(argv)}` failed: {err.strip().splitlines()[-1:]}"
        ran.append(argv[0])
    assert ran.count("generate") >= 2 and "train" in ran and "evaluate" in ran
