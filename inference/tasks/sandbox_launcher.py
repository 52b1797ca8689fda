"""The inside half of the sandbox: builds the program's world, then runs it under the test harness.

`sandbox.run_program` starts this file as a script (`python -I -S sandbox_launcher.py CONFIG`), as
PID 1 of fresh mount, PID, network, IPC and UTS namespaces made by `unshare(1)` (or, with
--unsafe-allow-network on a machine without namespaces, as a plain child). It uses the standard
library only and never imports the project: it runs before the privilege drop, so it must stay small.

Exit status: the program's own (clamped below 124), 124 when the program ran past its time (we
killed it), 125 when the sandbox could not be built (the reason is the last line on stderr).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import subprocess
import sys

TIMED_OUT, SETUP_FAILED = 124, 125

# Runs inside the sandboxed interpreter. The per-run token is read from its pipe only after the
# program (whose last statement is the tests' `check(entry_point)`) returned normally, and only then
# written to the result pipe: sys.exit(0), os._exit(0), raising SystemExit or any other exception,
# a crash or a kill before the end leaves the result pipe empty, which the parent scores as failed.
HARNESS = r"""
import os, sys
def _harness(token_fd, result_fd):
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    sys.argv = ["program.py"]
    try:
        exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os.write(result_fd, os.read(token_fd, 64))
    os._exit(0)
_harness(int(sys.argv[1]), int(sys.argv[2]))
"""

# <sys/mount.h>, <linux/mount.h>, <linux/prctl.h>, <linux/securebits.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_RECURSIVE, AT_FDCWD = 1, 2, 0x8000, -100
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT = 38, 24, 28, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# noroot, no_setuid_fixup and no_cap_ambient_raise set and locked; keep_caps locked off.
SECUREBITS = 0b11101111
SYS_MOUNT_SETATTR = 442  # Linux 5.12+; the same number on the architectures _make_read_only lists

# What the program sees besides the interpreter: system binaries and libraries, read-only. Nothing
# else of the host (home folders, /root, the repository, /var, /run, /srv, /mnt, /tmp) exists for it.
SYSTEM_PATHS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]
DEVICES = ["null", "zero", "full", "random", "urandom"]

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, arg: int = 0) -> int:
    return _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _make_read_only(root: str, binds: list[str]) -> None:
    """Every mount under `root` read-only and nosuid (blocks writes to the host's files and setuid binaries).

    mount_setattr changes only these two attributes over the whole tree; the older remount, used where
    the kernel lacks it, must repeat the flags a user namespace locked, which statvfs reports.
    """
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    if platform.machine() in ("x86_64", "aarch64", "riscv64", "ppc64le", "s390x"):
        if _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, root.encode(), AT_RECURSIVE, attr, ctypes.sizeof(attr)) == 0:
            return
    for target in [root, *binds]:
        locked = os.statvfs(target).f_flag & (MS_NODEV | MS_NOEXEC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | locked)


def _exposed(paths: list[str]) -> list[str]:
    """The interpreter's folders that system paths do not already cover, outermost first, no nesting."""
    chosen: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths} - {"/"}):
        covered = any(path == c or path.startswith(c + "/") for c in SYSTEM_PATHS + chosen)
        if os.path.isdir(path) and not covered:
            chosen.append(path)
    return chosen


def _bind_folders(root: str, paths: list[str]) -> list[str]:
    """Bind host folders at the same paths under `root` (symlinks such as /bin -> usr/bin are copied)."""
    binds = []
    for path in paths:
        inside = root + path
        if os.path.islink(path):
            os.symlink(os.readlink(path), inside)
        elif os.path.isdir(path):
            os.makedirs(inside, exist_ok=True)  # only folders of our tmpfs: covered paths were left out
            _mount(path, inside, None, MS_BIND | MS_REC)
            binds.append(inside)
    return binds


def _bind_devices(root: str) -> list[str]:
    """A /dev with the harmless character devices only (no disks, no terminals, no /dev/shm)."""
    os.mkdir(root + "/dev")
    binds = []
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
        binds.append(f"{root}/dev/{name}")
    for name, fd in [("stdin", 0), ("stdout", 1), ("stderr", 2)]:
        os.symlink(f"/proc/self/fd/{fd}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", f"{root}/dev/fd")
    return binds


def build_root(cfg: dict, source: str) -> None:
    """Mount the program's minimal read-only root, with a private writable /tmp, and chroot into it."""
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID, "size=1m,nr_inodes=4096,mode=0755")
    binds = _bind_folders(root, SYSTEM_PATHS + _exposed(cfg["expose"])) + _bind_devices(root)
    # A fresh /proc of the new PID namespace: the evaluator's processes (and their environ) are not in it.
    os.mkdir(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(root + "/tmp")
    _make_read_only(root, binds)
    # The one writable place: a small tmpfs, gone with the mount namespace (nothing to clean up on disk).
    owner = cfg["uid"] if cfg["uid"] is not None else 0
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['tmp_bytes']},nr_inodes=1024,mode=0700,uid={owner},gid={owner}")
    with open(root + "/tmp/program.py", "w", encoding="utf-8") as f:
        f.write(source)
    # chroot, not pivot_root: the old root stays mounted in this namespace but out of reach, since the
    # program gets no CAP_SYS_CHROOT, no open folder outside, and (chrooted) cannot make a user namespace.
    os.chroot(root)
    os.chdir("/tmp")


def _drop_bounding_set() -> None:
    """No capability can ever come back to this process tree, whatever it executes."""
    cap = 0
    while _prctl(PR_CAPBSET_DROP, cap) == 0:  # until EINVAL: past the kernel's last capability
        cap += 1


def _drop_capabilities() -> None:
    """In a user namespace we stay its uid 0: empty the ambient set and lock `noroot`, so the exec'd
    interpreter holds no capability (no remounting, no chroot escape, no ptrace of us)."""
    _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL), "clear ambient capabilities")
    _check(_prctl(PR_SET_SECUREBITS, SECUREBITS), "set securebits")


def _enter(cfg: dict):
    """Runs in the forked child just before exec (the launcher has no threads, so this is safe)."""

    def enter() -> None:
        os.setsid()  # its own session and process group
        limit = lambda kind, value: resource.setrlimit(kind, (value, value))  # noqa: E731
        limit(resource.RLIMIT_AS, cfg["memory_bytes"])  # memory bombs
        limit(resource.RLIMIT_CPU, cfg["cpu_seconds"])  # busy loops that a wall clock alone would let spin
        limit(resource.RLIMIT_FSIZE, 1 << 20)  # filling the disk or the stderr file
        limit(resource.RLIMIT_CORE, 0)
        limit(resource.RLIMIT_NOFILE, 256)
        if cfg["isolate"]:
            # Fork bombs. RLIMIT_NPROC counts every process of the uid, so it only means something for
            # a uid of our own: a fresh one (as root) or uid 0 of a fresh user namespace.
            limit(resource.RLIMIT_NPROC, cfg["nproc"])
        # No setuid binary (su, sudo, mount) gives privileges back.
        _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "set no_new_privs")
        if cfg["isolate"]:
            _drop_bounding_set()
        if cfg["uid"] is not None:  # as root: become a uid that owns no file and no process of the host
            os.setgroups([])
            os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        elif cfg["isolate"]:
            _drop_capabilities()

    return enter


def run(cfg: dict) -> int:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.getcwd(), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [cfg["python"], "-I", "-c", HARNESS, str(cfg["token_fd"]), str(cfg["result_fd"])],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        pass_fds=(cfg["token_fd"], cfg["result_fd"]), preexec_fn=_enter(cfg),
    )
    os.close(cfg["token_fd"])
    os.close(cfg["result_fd"])
    try:
        code = proc.wait(timeout=cfg["timeout_s"])
    except subprocess.TimeoutExpired:
        code = None
    finally:
        # Without a PID namespace this is all the cleanup there is; with one, our own exit kills the
        # rest of the namespace, double forks and setsid included.
        try:
            os.killpg(proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
    if code is None:
        return TIMED_OUT
    return 128 - code if code < 0 else min(code, TIMED_OUT - 1)  # the program cannot fake our statuses


def main() -> int:
    cfg = json.loads(sys.argv[1])
    os.umask(0o022)  # the folders we create in the new root must be traversable by the program's uid
    try:
        with open(cfg["program"], encoding="utf-8") as f:
            source = f.read()
        if cfg["isolate"]:
            build_root(cfg, source)
        else:
            os.chdir(cfg["workdir"])
        return run(cfg)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"sandbox: cannot start the program: {exc}", file=sys.stderr)
        return SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
