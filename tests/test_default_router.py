"""The shipped router (models/default-router) on the real default pair, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deferral.cli import main as deferral

ROUTER = str(Path(__file__).resolve().parent.parent / "models" / "default-router")
PROMPT = "def moving_average(values, window):\n"


def generate_json(capsys, *flags: str) -> dict:
    capsys.readouterr()
    rc = deferral(["generate", "--prompt", PROMPT, "--max-new-tokens", "16", "--json", *flags])
    assert rc == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_shipped_router_runs_on_the_default_pair(capsys):
    target = generate_json(capsys, "--rule", "target")
    # Deferring at every position makes π = p: greedy output equals the target's, token for token.
    always = generate_json(capsys, "--rule", "learned", "--router", ROUTER, "--threshold=-1e9")
    assert always["tokens"] == target["tokens"]
    assert always["deferred"] == always["examined"] > 0
    # At its calibrated rate it keeps some drafts where the target would not have produced them.
    learned = generate_json(capsys, "--rule", "learned", "--router", ROUTER, "--deferral-rate", "0.2")
    assert learned["new_tokens"] == 16 and learned["deferred"] < learned["examined"]


def test_shipped_router_is_refused_by_another_pair(tiny_dir, capsys):
    rc = deferral(["generate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                   "--rule", "learned", "--router", ROUTER, "--prompt", "x", "--max-new-tokens", "2"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "router" in err[0]
