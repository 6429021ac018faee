"""Run untrusted Python programs: own process and session, limits, no network, scratch dir.

One call, `Sandbox.run(files, stdin)`, starts

    [unshare --net --pid --fork --mount --mount-proc --kill-child]   (namespace tier only)
      python -I -S deltarl/rewards/_launcher.py        (root inside: mounts, files, fork, wait)
        python -I -B main.py                   (the program: sandbox uid, rlimits, seccomp)

in a new session, feeds stdin, reads stdout/stderr up to a cap, and on the wall-clock deadline
kills the whole process group (and, in the namespace tier, the PID namespace with it). Three
isolation tiers, chosen once per process by probing (`isolation="auto"`), strongest first:

- "namespace": root and a working `unshare`. Own network namespace (no interfaces but a down
  loopback), own PID namespace and /proc, own mount namespace with the whole file system
  read-only except a fresh tmpfs scratch directory, a uid of its own, rlimits, seccomp
  refusing socket() as a second wall.
- "uid": root without namespaces. A uid of its own (files are protected by permissions only, so
  world-writable directories such as /tmp stay writable), rlimits, seccomp refusing socket().
- "process": not root. Same uid as the trainer, so seccomp also refuses fork, kill and ptrace;
  rlimits; the program can read and write whatever the trainer's user can.

Each concurrent run gets a distinct uid (`uid_base + pid * 256 + slot`), so RLIMIT_NPROC is per
run and everything a run leaves behind can be killed by uid. Statuses: ok, runtime_error,
timeout, memory, output_limit, sandbox_error.
"""
from __future__ import annotations

import contextlib
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("_launcher.py"))
TIERS = ("namespace", "uid", "process")
STATUSES = ("ok", "runtime_error", "timeout", "memory", "output_limit", "sandbox_error")
UID_BASE = 1_000_000_000  # far above any real account; + pid * 256 + slot stays below 2**31
NS_SCRATCH = "/tmp/sandbox"  # scratch path inside the namespace tier's private /tmp


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. cpu_s is RLIMIT_CPU, wall_s the deadline after which the group dies."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    nproc: int = 64  # RLIMIT_NPROC for the run's own uid (tiers namespace/uid)
    nofile: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 4 << 20  # stdout (and stderr) beyond this: killed, status output_limit
    scratch_mb: int = 64  # size of the tmpfs scratch (namespace tier)


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    stdout: str = ""
    stderr: str = ""  # the last 16 KiB
    returncode: int | None = None  # the program's exit code, when it exited
    signal: int | None = None  # the signal that ended it, when one did
    wall_s: float = 0.0
    cpu_s: float = 0.0
    isolation: str = ""  # tier plus layers, e.g. "namespace:net,pid,mount,uid,rlimit,seccomp"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SandboxUnavailable(RuntimeError):
    """The requested isolation tier does not work on this machine."""


def _pid_alive_uid(uid: int) -> list[int]:
    """Pids of live processes whose real uid is `uid` (scans /proc)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry.name))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return pids


class _TailBuffer:
    """Keeps the first `cap` bytes (head=True) or the last `cap` bytes, and the total seen."""

    def __init__(self, cap: int, head: bool):
        self.cap, self.head, self.total, self.data = cap, head, 0, bytearray()

    def add(self, chunk: bytes):
        self.total += len(chunk)
        if self.head:
            room = self.cap - len(self.data)
            if room > 0:
                self.data += chunk[:room]
        else:
            self.data += chunk
            if len(self.data) > self.cap:
                del self.data[: len(self.data) - self.cap]


class Sandbox:
    """Runs programs in the strongest isolation tier available; thread-safe, `max_parallel` at once.

    `isolation`: "auto" or one of TIERS. `python`: the interpreter for programs; by default the
    first of (this interpreter, the system python3) that the sandbox uid can execute.
    `seccomp`: True: a seccomp filter refuses socket() (and, in the process tier, fork, kill and
    ptrace), falling back to the in-process socket guard where filters cannot be installed;
    "guard": only the in-process guard (weaker: a determined program can undo it); False:
    neither. `network_namespace`: set False only to test the other walls.
    `site_packages`: let programs import the interpreter's installed packages (False: -S, only
    the standard library, ~4 ms faster per run).
    """

    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "auto",
                 python: str | None = None, max_parallel: int | None = None,
                 seccomp: bool | str = True,
                 network_namespace: bool = True, site_packages: bool = True):
        if seccomp not in (True, False, "guard"):
            raise ValueError("seccomp must be True, False or 'guard'")
        if isolation != "auto" and isolation not in TIERS:
            raise ValueError(f"isolation must be 'auto' or one of {TIERS}, not {isolation!r}")
        self.limits = limits or SandboxLimits()
        self.max_parallel = max_parallel or os.cpu_count() or 1
        self.seccomp = seccomp
        self.network_namespace = network_namespace
        self.site_packages = site_packages
        self._parallel = threading.BoundedSemaphore(self.max_parallel)
        self._tier, self._python = self._choose(isolation, python)

    # -- set-up -------------------------------------------------------------------------------
    @property
    def tier(self) -> str:
        return self._tier

    @property
    def python(self) -> str:
        return self._python

    def _choose(self, isolation: str, python: str | None) -> tuple[str, str]:
        tiers = TIERS if isolation == "auto" else (isolation,)
        pythons = [python] if python else _python_candidates()
        errors = []
        for tier in tiers:
            if tier in ("namespace", "uid") and os.geteuid() != 0:
                errors.append(f"{tier}: needs root")
                continue
            if tier == "namespace" and not shutil.which("unshare"):
                errors.append("namespace: no unshare binary")
                continue
            for py in pythons:
                key = (tier, py, self.seccomp, self.network_namespace, self.site_packages)
                with _PROBE_LOCK:
                    if key not in _PROBED:
                        self._tier, self._python = tier, py
                        with _uid_slot() as slot:
                            res = self._run_once({"main.py": "print(6 * 7)"}, b"",
                                                 replace(self.limits, wall_s=20.0), slot)
                        _PROBED[key] = (res.status == "ok" and res.stdout.strip() == "42",
                                        f"{res.status}: {res.stderr.strip()[-300:]}")
                    works, why = _PROBED[key]
                if works:
                    return tier, py
                errors.append(f"{tier} with {py}: {why}")
        raise SandboxUnavailable("no sandbox tier works here:\n  " + "\n  ".join(errors))

    # -- running ------------------------------------------------------------------------------
    def run(self, files: dict[str, str] | str, stdin: bytes | str = b"",
            argv: tuple[str, ...] = ("main.py",), limits: SandboxLimits | None = None
            ) -> SandboxResult:
        """Run `files` (plain name -> text; a string is main.py) with `stdin`; never raises for
        what the program does."""
        if isinstance(files, str):
            files = {"main.py": files}
        for name in files:
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file names must be plain names, not {name!r}")
        if isinstance(stdin, str):
            stdin = stdin.encode()
        with self._parallel, _uid_slot() as slot:
            return self._run_once(files, stdin, limits or self.limits, slot, argv)

    def _run_once(self, files, stdin, limits, slot, argv=("main.py",)) -> SandboxResult:
        tier = self._tier
        uid = UID_BASE + (os.getpid() % (1 << 22)) * 256 + slot if tier != "process" else None
        layers = []
        if tier == "namespace":
            ns = ["--pid", "--fork", "--mount", "--mount-proc", "--kill-child"]
            if self.network_namespace:
                ns.insert(0, "--net")
            prefix = [shutil.which("unshare"), *ns]
            if _SETPRIV:  # unshare dies with the trainer; --kill-child then takes the rest
                prefix = [_SETPRIV, "--pdeathsig", "KILL", "--", *prefix]
            layers += (["net"] if self.network_namespace else []) + ["pid", "mount"]
            scratch, host_scratch = NS_SCRATCH, None
        else:
            prefix = []
            host_scratch = tempfile.mkdtemp(prefix="deltarl-sandbox-")
            scratch = host_scratch
        layers += (["uid"] if uid is not None else []) + ["rlimit"]
        use_seccomp, deny_sockets = self.seccomp is True, self.seccomp in (True, "guard")
        rlimits = {"cpu": [max(1, int(limits.cpu_s + 0.999)), max(1, int(limits.cpu_s + 0.999)) + 1],
                   "as": limits.memory_mb << 20, "fsize": limits.file_mb << 20,
                   "nofile": limits.nofile, "core": 0}
        if uid is not None:
            rlimits["nproc"] = limits.nproc
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        status_r, status_w = os.pipe()
        spec_fd = os.memfd_create("sandbox-spec")  # close-on-exec: only pass_fds shares it
        spec = {"files": files, "argv": list(argv), "python": self._python,
                "python_flags": ["-I", "-B"] + ([] if self.site_packages else ["-S"]), "env": env, "uid": uid, "gid": uid,
                "scratch": scratch, "private_tmp": tier == "namespace",
                "pid_namespace": tier == "namespace", "scratch_mb": limits.scratch_mb,
                "rlimits": rlimits, "status_fd": status_w,
                "seccomp": {"enabled": use_seccomp, "deny_sockets": deny_sockets,
                            "deny_fork": tier == "process", "deny_signals": tier == "process"}}
        os.write(spec_fd, marshal.dumps(spec, 4))  # format 4: any Python 3.4+ reads it
        os.lseek(spec_fd, 0, os.SEEK_SET)
        cmd = [*prefix, self._python, "-I", "-S", LAUNCHER, str(spec_fd)]  # root runs it
        start = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    pass_fds=(spec_fd, status_w), close_fds=True,
                                    env={"PATH": "/usr/bin:/bin"}, cwd="/")
        except OSError as e:
            for fd in (spec_fd, status_r, status_w):
                os.close(fd)
            if host_scratch:
                shutil.rmtree(host_scratch, ignore_errors=True)
            return SandboxResult("sandbox_error", stderr=f"could not start: {e}", isolation=tier)
        os.close(spec_fd)
        os.close(status_w)
        try:
            out, err, reason = _pump(proc, stdin, start + limits.wall_s, limits.output_bytes)
            if reason is None:
                try:
                    proc.wait(timeout=max(0.0, start + limits.wall_s - time.monotonic()))
                except subprocess.TimeoutExpired:
                    reason = "timeout"
        finally:
            _terminate(proc, tier, uid, self._python)
        wall = time.monotonic() - start
        report = _read_status(status_r)
        if host_scratch:
            shutil.rmtree(host_scratch, ignore_errors=True)
        stderr = err.data.decode("utf-8", "replace")
        if use_seccomp and report.get("seccomp"):
            layers.append("seccomp")
        elif deny_sockets:
            layers.append("socket-guard")
        result = SandboxResult(
            status="ok", stdout=out.data.decode("utf-8", "replace"),
            stderr=stderr, returncode=report.get("exit"),
            signal=report.get("signal"), wall_s=wall, cpu_s=report.get("cpu_s", 0.0),
            isolation=f"{tier}:{','.join(layers)}")
        result.status = _classify(result, reason, report, limits)
        return result


_SETPRIV = shutil.which("setpriv")  # util-linux; only for its --pdeathsig
_PROBE_LOCK = threading.Lock()
_PROBED: dict = {}

# Slots are per process, shared by every Sandbox in it: a slot is a uid, and two runs must never
# share one (RLIMIT_NPROC is per uid, and clean-up kills everything of the uid).
_FREE_SLOTS = list(range(255, -1, -1))
_SLOTS_CHANGED = threading.Condition()


@contextlib.contextmanager
def _uid_slot():
    with _SLOTS_CHANGED:
        while not _FREE_SLOTS:
            _SLOTS_CHANGED.wait()
        slot = _FREE_SLOTS.pop()
    try:
        yield slot
    finally:
        with _SLOTS_CHANGED:
            _FREE_SLOTS.append(slot)
            _SLOTS_CHANGED.notify()


def _python_candidates() -> list[str]:
    """Interpreters to try for programs: ours first, then the system's."""
    seen, out = set(), []
    for p in (sys.executable, getattr(sys, "_base_executable", None), shutil.which("python3"),
              "/usr/bin/python3", "/usr/local/bin/python3"):
        if p and os.path.exists(p):
            real = os.path.realpath(p)
            if real not in seen:
                seen.add(real)
                out.append(p)
    return out


def _pump(proc, stdin: bytes, deadline: float, cap: int):
    """Feed stdin and drain stdout/stderr until both close, the deadline, or `cap` bytes."""
    out, err = _TailBuffer(cap, head=True), _TailBuffer(16 << 10, head=False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    view, pos = memoryview(stdin), 0
    if stdin:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, None)
    else:
        proc.stdin.close()
    reason, readers = None, 2
    try:
        while readers:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                if key.data is None:  # stdin writable
                    try:
                        pos += os.write(key.fd, view[pos: pos + 65536])
                    except (BrokenPipeError, OSError):
                        pos = len(view)
                    if pos >= len(view):
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    readers -= 1
                    continue
                key.data.add(chunk)
                if out.total > cap or err.total > cap:
                    reason = "output_limit"
                    readers = 0
                    break
    finally:
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
    return out, err, reason


def _terminate(proc, tier: str, uid: int | None, python: str):
    """End a run and everything it started, whatever state it is in.

    Normal exit: the launcher already killed and reaped the run's uid. Otherwise, namespace tier:
    killing the group kills the launcher, PID 1 of the namespace, and the kernel kills the rest.
    uid tier: kill the run's uid first, so the launcher (root, a subreaper) lives to reap the
    orphans, then the group as a backstop.
    """
    if proc.poll() is None:
        if tier == "uid" and uid is not None:
            _kill_uid(uid, python)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc)
        proc.wait()
        if uid is not None:
            _kill_uid(uid, python)
    else:
        _kill_group(proc)  # stragglers that kept the session's group, if any


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int, python: str):
    """Kill every process of the run's uid, as that uid: kill(-1) is atomic against fork bombs."""
    if not _pid_alive_uid(uid):
        return
    for _ in range(3):
        subprocess.run([python, "-I", "-S", "-c", "import os; os.kill(-1, 9)"], user=uid,
                       group=uid, extra_groups=[], env={}, cwd="/", stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pids = _pid_alive_uid(uid)
            if not pids or all(_is_zombie(p) for p in pids):
                return
            time.sleep(0.01)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _read_status(fd: int) -> dict:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:  # written by our launcher (root); the program never holds this descriptor
        report = marshal.loads(b"".join(chunks))
    except (EOFError, ValueError, TypeError):
        return {}
    return report if isinstance(report, dict) else {}


def _classify(result: SandboxResult, reason, report: dict, limits: SandboxLimits) -> str:
    """One status for the run, from the pump's reason, the launcher's report and stderr."""
    if reason == "output_limit":
        return "output_limit"
    if reason == "timeout":
        return "timeout"
    if report.get("setup_error") or not report:
        result.stderr += f"\n[sandbox] launcher: {report.get('setup_error', 'no status report')}"
        return "sandbox_error"
    sig = result.signal
    if sig in (signal.SIGXCPU, signal.SIGKILL) and result.cpu_s >= limits.cpu_s - 0.5:
        return "timeout"
    if "MemoryError" in result.stderr or "Cannot allocate memory" in result.stderr:
        return "memory"
    if sig is None and result.returncode == 0:
        return "ok"
    return "runtime_error"


_DEFAULT: Sandbox | None = None
_DEFAULT_LOCK = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox (auto tier, default limits), created on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Sandbox()
        return _DEFAULT


def set_default_parallel(max_parallel: int) -> Sandbox:
    """Make the process-wide sandbox run at most `max_parallel` programs at once (default: one per
    core): a reward-worker actor given 1 of a host's 16 CPUs should not start 16 programs at once."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        _DEFAULT = Sandbox(max_parallel=max_parallel)
        return _DEFAULT
