"""Run untrusted generated code isolated from the machine, and decide from the harness whether it passed.

Each program runs in a fresh interpreter (`python -I`) started by `sandbox_launcher.py` as PID 1 of
new mount, PID, network, IPC and UTS namespaces (`unshare(1)` from util-linux; as a normal user,
inside a user namespace). What each measure blocks is commented where it is taken; docs/evaluation.md
("Sandbox") lists them with their limits. In short: the program sees a minimal read-only root (system
folders and the interpreter only) with a private 16 MiB /tmp, has no network, cannot see or signal any
process outside, runs as a uid that owns nothing (or with no capability), under memory, CPU, file-size
and process-count limits, and all of it dies with the check. It passes only when the harness reports
that the program ran to its end (the tests included) by echoing a per-run token; its exit status
counts for nothing.

Where namespaces are unavailable (a normal user without user namespaces, a container without
CAP_SYS_ADMIN) generated code is refused with a `DeferralError`, unless the caller passes
`unsafe_allow_network=True` (`deferral evaluate --unsafe-allow-network`): the code then runs as a
plain child with only the limits, the clean environment and the token, and a warning says so once.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from deferral.errors import DeferralError
from inference.tasks.sandbox_launcher import SETUP_FAILED, TIMED_OUT

LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
SETUP_GRACE_S = 10.0  # the launcher's start-up time, beyond which we kill it ourselves
PROCESS_LIMIT = 16  # RLIMIT_NPROC (threads count too): HumanEval programs need one; RLIMIT_AS is per process
TMP_BYTES = 16 << 20
# Fresh uids for sandboxed programs (as root): one per check, so that no two checks (and nothing on
# the host) share RLIMIT_NPROC's per-uid count, a /proc entry or a file owner.
UID_BASE, UID_SPAN = 0x7E000000, 1 << 20


@dataclass
class ExecutionResult:
    passed: bool
    status: str  # "passed", "failed", "timed out"
    detail: str = ""  # the last line of stderr for failures


@dataclass(frozen=True)
class Isolation:
    """How this machine can isolate generated code: the `unshare` prefix, or why there is none."""

    command: tuple[str, ...] | None
    fresh_uid: bool = False  # True: the program runs as a fresh uid; False: as uid 0 of a user namespace
    reason: str = ""


_isolation: Isolation | None = None
_warned = False
_lock = threading.Lock()


def isolation() -> Isolation:
    """Probe once per process (checks run in threads: the first one probes, the others wait)."""
    global _isolation
    with _lock:
        if _isolation is None:
            _isolation = _probe()
        return _isolation


def _probe() -> Isolation:
    """Run a trivial program in each kind of sandbox this user might build; the first that works wins.

    Probing the real pipeline (not just `unshare true`) also catches what only fails later: a
    container that forbids mounting proc, an interpreter whose libraries lie outside the exposed folders.
    """
    unshare = shutil.which("unshare", path=os.environ.get("PATH", "") + ":/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare is None:
        return Isolation(None, reason="util-linux `unshare` is not installed")
    base = (unshare, "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child")
    candidates = [Isolation(base, fresh_uid=True)] if os.geteuid() == 0 else []
    candidates.append(Isolation(base + ("--user", "--map-root-user")))
    reason = ""
    for candidate in candidates:
        result = _execute("pass", candidate, timeout_s=10.0, memory_mb=1024)
        if result.passed:
            return candidate
        reason = result.detail or result.status
    return Isolation(None, reason=reason)


def require_isolation(unsafe_allow_network: bool = False) -> Isolation:
    """The isolation to use; without one, refuse (or, when the user accepted the risk, warn once)."""
    global _warned
    found = isolation()
    if found.command is not None:
        return found
    if not unsafe_allow_network:
        raise DeferralError(
            f"cannot isolate generated code on this machine ({found.reason}): run as root, allow unprivileged "
            "user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, "
            "kernel.apparmor_restrict_unprivileged_userns), or pass --unsafe-allow-network to run it "
            "without network, process and file isolation"
        )
    with _lock:
        if not _warned:
            _warned = True
            print(f"warning: generated code runs WITHOUT network, process and file isolation ({found.reason}); "
                  "--unsafe-allow-network was given", file=sys.stderr)
    return found


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024,
                unsafe_allow_network: bool = False) -> ExecutionResult:
    """Run `source` in the sandbox; it passes when it runs to its end without raising."""
    return _execute(source, require_isolation(unsafe_allow_network), timeout_s, memory_mb)


def _config(folder: Path, isolation: Isolation, timeout_s: float, memory_mb: int, fds: tuple[int, int]) -> dict:
    fresh_uid = UID_BASE + secrets.randbelow(UID_SPAN) if isolation.fresh_uid else None
    # The interpreter's own folders (a venv and its base, pyenv under a private /root) are exposed
    # read-only in the new root, at the same paths so that the interpreter finds its library.
    expose = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)}
    expose |= {os.path.realpath(p) for p in list(expose) + [os.path.dirname(os.path.realpath(sys.executable))]}
    return {
        "isolate": isolation.command is not None,
        "uid": fresh_uid,
        "root": str(folder / "root"),
        "workdir": str(folder / "work"),
        "program": str(folder / "work" / "program.py"),
        "expose": sorted(expose),
        "python": sys.executable,
        "timeout_s": timeout_s,
        "memory_bytes": memory_mb << 20,
        "cpu_seconds": int(timeout_s) + 1,
        "nproc": PROCESS_LIMIT,
        "tmp_bytes": TMP_BYTES,
        "token_fd": fds[0],
        "result_fd": fds[1],
    }


def _execute(source: str, isolation: Isolation, timeout_s: float, memory_mb: int) -> ExecutionResult:
    token = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="deferral-sandbox-") as name:
        folder = Path(name)
        (folder / "root").mkdir()  # the mount point of the program's new root (stays empty out here)
        (folder / "work").mkdir()  # its working folder only without namespaces (else a tmpfs)
        (folder / "work" / "program.py").write_text(source, encoding="utf-8")
        token_read, result_read, result_write = _token_pipe(token), *os.pipe()
        try:
            cfg = _config(folder, isolation, timeout_s, memory_mb, (token_read, result_write))
            command = [*(isolation.command or ()), sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(cfg)]
            with open(folder / "stderr.txt", "w+b") as stderr:  # a file capped by RLIMIT_FSIZE, not a pipe
                code = _wait(command, stderr, (token_read, result_write), timeout_s + SETUP_GRACE_S)
                stderr.seek(0)
                lines = stderr.read(1 << 20).decode(errors="replace").strip().splitlines()
            report = _read_available(result_read)
        finally:
            for fd in (token_read, result_read, result_write):
                os.close(fd)
    return _verdict(code, report == token, lines)


def _token_pipe(token: bytes) -> int:
    """A pipe holding the run's token; the harness reads it only after the program and its tests ended."""
    read, write = os.pipe()
    os.write(write, token)
    os.close(write)
    return read


def _wait(command: list[str], stderr, pass_fds: tuple[int, int], timeout_s: float) -> int:
    """Start the launcher and wait for it; the exit status, or TIMED_OUT when we had to kill it."""
    proc = subprocess.Popen(
        command,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # the evaluator's environment (tokens, keys) stays here
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        pass_fds=pass_fds,
        start_new_session=True,  # killpg below reaches the launcher and, without namespaces, the program
    )
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return TIMED_OUT
    finally:
        # unshare --kill-child takes the namespace's PID 1, and so every process in it, along.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _read_available(fd: int) -> bytes:
    """What the harness wrote, without blocking should a stray writer survive (only without namespaces)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def _verdict(code: int, token_ok: bool, stderr_lines: list[str]) -> ExecutionResult:
    if code == TIMED_OUT:
        return ExecutionResult(False, "timed out")
    if token_ok and code == 0:
        return ExecutionResult(True, "passed")
    if code == SETUP_FAILED or (code == 1 and stderr_lines):  # the launcher's reason, or the harness's traceback
        return ExecutionResult(False, "failed", stderr_lines[-1] if stderr_lines else "sandbox setup failed")
    return ExecutionResult(False, "failed", _describe_exit(code))


def _describe_exit(code: int) -> str:
    """Why a program without a traceback did not pass (os._exit, a signal, a limit)."""
    if code > 128:
        try:
            return f"ended before its tests finished: killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"ended before its tests finished (exit status {code})"
