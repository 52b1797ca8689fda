"""Run untrusted generated code in a separate Python process with time and memory limits.

Generated code never runs inside our process: it is written to a temporary folder and executed by
a fresh interpreter in isolated mode (`-I`: no user site, no PYTHON* variables), in its own session
so a timeout kills everything it spawned, with RLIMIT_AS / RLIMIT_CPU / RLIMIT_FSIZE set before exec.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExecutionResult:
    passed: bool
    status: str  # "passed", "failed", "timed out"
    detail: str = ""  # the last line of stderr for failures


def _limits(memory_bytes: int, cpu_seconds: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # no large files
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Execute `source` as a script; it passes when it exits with status 0 within `timeout_s`."""
    with tempfile.TemporaryDirectory(prefix="deferral-sandbox-") as folder:
        script = Path(folder) / "program.py"
        script.write_text(source)
        errors = Path(folder) / "stderr.txt"  # a file, capped by RLIMIT_FSIZE, not an unbounded pipe
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "HOME": folder}
        with open(errors, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(script)],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_limits(memory_mb << 20, int(timeout_s) + 1),
            )
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return ExecutionResult(False, "timed out")
            finally:
                _kill_group(proc)
        if proc.returncode == 0:
            return ExecutionResult(True, "passed")
        lines = errors.read_text(errors="replace").strip().splitlines()
        return ExecutionResult(False, "failed", lines[-1] if lines else f"exit status {proc.returncode}")


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the program's whole session (it may have spawned children) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
