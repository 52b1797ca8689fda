"""`pip install .` (not editable) carries the shipped assets: from an unrelated directory, the
installed command finds the default drafter, the default router and the configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_wheel_install_finds_its_assets_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    had_build = (ROOT / "build").exists()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(ROOT)], check=True, capture_output=True)
    finally:
        if not had_build:  # setuptools builds in the source tree: leave the checkout as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    venv = tmp_path / "venv"
    # the venv sees this interpreter's packages (torch, transformers, ...) but gets its own `deferral`
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(next(wheels.glob("*.whl")))],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import deferral, deferral.pair as p, deferral.assets as a\n"
        "print(deferral.__file__)\n"
        "print(p.default_drafter_source())\n"
        "print(a.asset_path('models', 'default-router', 'router.json'))\n"
        "print(a.asset_path('configs', 'router.yaml'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("DEFERRAL_DEFAULT_DRAFTER", None)
    out = subprocess.run([str(python), "-c", probe], cwd=elsewhere, env=env, check=True, capture_output=True,
                         text=True).stdout.split("\n")
    module, drafter, router, config = (Path(line) for line in out[:4])
    assert not module.is_relative_to(ROOT)  # the installed copy, not the checkout
    for path in (drafter, router, config):
        assert path.exists() and path.is_relative_to(venv), path
    assert (drafter / "model.safetensors").stat().st_size == (ROOT / "models/default-drafter/model.safetensors").stat().st_size
    # the installed command runs from there and resolves the default drafter on its own
    help_text = subprocess.run([str(venv / "bin" / "deferral"), "demo", "--help"], cwd=elsewhere, env=env,
                               check=True, capture_output=True, text=True).stdout
    assert str(config).replace(" ", "") in "".join(help_text.split())  # the demo's default router config
    # and decodes with the installed default pair and router, from there, without the checkout
    generated = subprocess.run(
        [str(venv / "bin" / "deferral"), "generate", "--rule", "learned", "--router", str(router.parent),
         "--threshold", "0.3", "--prompt", "def add(a, b):", "--max-new-tokens", "8", "--json"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout
    row = json.loads(generated.splitlines()[-1])
    assert row["new_tokens"] == 8 and row["target_calls"] >= 1
