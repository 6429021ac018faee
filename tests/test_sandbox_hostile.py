"""Hostile programs: each is contained with a clear status, within its time budget, and leaves
the parent (this test process) and the machine unharmed.

The suite runs on the strongest isolation tier this machine allows (root with unshare:
"namespace"; root without: "uid"); tier-specific walls are checked where they apply.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deltarl.rewards.sandbox import UID_BASE, Sandbox, SandboxLimits, SandboxUnavailable

LIMITS = SandboxLimits(wall_s=3.0, cpu_s=2.0, memory_mb=256, output_bytes=1 << 20)
BUDGET = LIMITS.wall_s + 2.0  # seconds a hostile case may take, start-up and clean-up included


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(limits=LIMITS)


def sandbox_processes() -> list[int]:
    """Live processes owned by any sandbox uid on this machine."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                uid = os.stat(entry.path).st_uid
            except FileNotFoundError:
                continue
            if UID_BASE <= uid < 2 ** 31:
                pids.append(int(entry.name))
    return pids


@pytest.fixture()
def victim_dir(sandbox):
    """A directory outside the scratch dir holding a file to protect. World-writable in the
    namespace tier (only the read-only mount stops writes), root-owned 0755 in the uid tier
    (where permissions are the wall), always reachable by path."""
    base = "/var/tmp" if os.path.isdir("/var/tmp") else "/tmp"
    path = Path(tempfile.mkdtemp(prefix="deltarl-victim-", dir=base))
    (path / "keep.txt").write_text("precious")
    mode = 0o777 if sandbox.tier == "namespace" else 0o755
    os.chmod(path, mode)
    os.chmod(path / "keep.txt", 0o666 if sandbox.tier == "namespace" else 0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_hostile(sandbox, source: str, **limit_overrides):
    before = time.monotonic()
    limits = SandboxLimits(**{**LIMITS.__dict__, **limit_overrides})
    result = sandbox.run(textwrap.dedent(source), limits=limits)
    elapsed = time.monotonic() - before
    assert elapsed < limits.wall_s + 2.0, f"took {elapsed:.1f}s"
    assert sandbox_processes() == [], "the program left processes behind"
    return result


def test_tier_is_reported(sandbox):
    result = sandbox.run("print('hi')")
    assert result.ok and result.stdout == "hi\n"
    assert result.isolation.startswith(sandbox.tier + ":")
    if os.geteuid() == 0 and shutil.which("unshare"):
        assert sandbox.tier == "namespace"  # this machine (and CI) allow the strongest tier
    if sandbox.tier == "namespace":
        assert set(result.isolation.split(":")[1].split(",")) >= {"net", "pid", "mount", "uid",
                                                                  "rlimit", "seccomp"}


def test_infinite_loop(sandbox):
    r = run_hostile(sandbox, "while True:\n    pass")
    assert r.status == "timeout"
    assert r.cpu_s <= LIMITS.cpu_s + 1.5


def test_fork_bomb(sandbox):
    n_before = len(os.listdir("/proc"))
    r = run_hostile(sandbox, """
        import os, time
        while True:
            try:
                if os.fork() == 0:
                    os.setsid()  # try to leave the process group too
            except OSError:
                time.sleep(0.001)
    """)
    assert r.status in ("timeout", "runtime_error")
    assert len(os.listdir("/proc")) < n_before + 20


def test_memory_bomb(sandbox):
    r = run_hostile(sandbox, """
        chunks = []
        while True:
            chunks.append(bytearray(50 * 1024 * 1024))
    """)
    assert r.status == "memory", r.stderr[-300:]


def test_100mb_of_output(sandbox):
    r = run_hostile(sandbox, """
        import sys
        block = "x" * (1 << 20)
        for _ in range(100):
            sys.stdout.write(block)
    """)
    assert r.status == "output_limit"
    assert len(r.stdout) <= LIMITS.output_bytes
    assert r.wall_s < 2.0  # stopped at the cap, not after 100 MB


def test_writing_outside_the_scratch_directory(sandbox, victim_dir):
    targets = [victim_dir / "pwned.txt", Path("/work/main/pwned.txt"), Path("/etc/pwned"),
               Path("/root/pwned"), Path(os.path.dirname(os.__file__)) / "pwned.py"]
    if sandbox.tier == "namespace":  # world-writable places are read-only (or hidden) too
        targets += [Path("/tmp/pwned-by-sandbox"), Path("/var/tmp/pwned-by-sandbox"),
                    Path("/dev/shm/pwned-by-sandbox")]
    r = run_hostile(sandbox, f"""
        import os
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                print("WROTE", path, flush=True)
            except OSError as e:
                print("denied", path, e.errno, flush=True)
        with open("inside.txt", "w") as f:  # the scratch directory itself is writable
            f.write("fine")
        print("scratch ok", os.path.exists("inside.txt"))
    """)
    assert r.status == "ok"
    assert "WROTE" not in r.stdout and r.stdout.count("denied") == len(targets)
    assert "scratch ok True" in r.stdout
    for t in targets:
        assert not t.exists(), t
    assert sorted(os.listdir(victim_dir)) == ["keep.txt"]


def test_deleting_files(sandbox, victim_dir):
    r = run_hostile(sandbox, f"""
        import os, shutil
        for path in [{str(victim_dir / 'keep.txt')!r}, "/work/main/pyproject.toml", "/etc/hostname"]:
            try:
                os.remove(path)
                print("DELETED", path, flush=True)
            except OSError as e:
                print("denied", path, e.errno, flush=True)
        shutil.rmtree({str(victim_dir)!r}, ignore_errors=True)
        shutil.rmtree("/work", ignore_errors=True)
    """)
    assert r.status == "ok" and "DELETED" not in r.stdout
    assert (victim_dir / "keep.txt").read_text() == "precious"
    assert Path("/work/main/pyproject.toml").exists()


def test_reading_the_parents_environment_secrets(sandbox, monkeypatch):
    if sandbox.tier == "process":
        pytest.skip("process tier: same uid as the trainer, /proc/<pid>/environ is readable")
    secret = "deltarl-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("DELTARL_TEST_SECRET", secret)
    r = run_hostile(sandbox, f"""
        import glob, os
        print(dict(os.environ))
        for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline") + ["/proc/{os.getpid()}/environ"]:
            try:
                with open(path, "rb") as f:
                    print(path, f.read())
            except OSError as e:
                print(path, "denied", e.errno)
    """)
    assert r.status == "ok"
    assert secret not in r.stdout and secret not in r.stderr
    assert "DELTARL_TEST_SECRET" not in r.stdout
    env_line = r.stdout.splitlines()[0]
    assert "'HOME'" in env_line and "'PATH'" in env_line and len(eval(env_line)) <= 5


def test_opening_a_network_connection(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        r = run_hostile(sandbox, f"""
            import socket
            for addr in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
                try:
                    socket.create_connection(addr, timeout=1).close()
                    print("CONNECTED", addr, flush=True)
                except OSError as e:
                    print("denied", addr, e.errno, flush=True)
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto(b"x", ("127.0.0.1", {port}))
                print("SENT UDP", flush=True)
            except OSError as e:
                print("denied udp", e.errno, flush=True)
        """)
        assert r.status == "ok"
        assert "CONNECTED" not in r.stdout and "SENT" not in r.stdout
        assert r.stdout.count("denied") == 4
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the parent's listener
    finally:
        server.close()


def test_network_namespace_alone_blocks_the_network():
    """The second wall (seccomp) off: the empty network namespace still isolates."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs the namespace tier")
    sb = Sandbox(limits=LIMITS, isolation="namespace", seccomp=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    try:
        r = sb.run(f"""
import socket
print(socket.if_nameindex())
try:
    socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=1)
    print("CONNECTED")
except OSError as e:
    print("denied", e.errno)
""")
        assert r.status == "ok" and "denied" in r.stdout and "CONNECTED" not in r.stdout
        assert r.stdout.splitlines()[0] == "[(1, 'lo')]"  # only the namespace's own loopback
        assert "seccomp" not in r.isolation
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_socket_guard_fallback():
    """Where seccomp filters cannot be installed the launcher patches socket creation in the
    program's interpreter instead: it stops ordinary code (documented as bypassable)."""
    sb = Sandbox(limits=LIMITS, seccomp="guard", network_namespace=False)
    r = sb.run("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 1))\n"
               "except OSError as e:\n    print('denied:', e)\nprint(__name__)")
    assert r.ok and "network denied by sandbox" in r.stdout and r.stdout.endswith("__main__\n")
    assert r.isolation.endswith("socket-guard") and "net" not in r.isolation.split(":")[1]


def test_killing_the_parent_process(sandbox):
    parent = os.getpid()
    r = run_hostile(sandbox, f"""
        import os, signal
        for pid in [{parent}, os.getppid(), 1, -1]:
            try:
                os.kill(pid, signal.SIGKILL)
                print("sent", pid, flush=True)
            except OSError as e:
                print("denied", pid, e.errno, flush=True)
        try:
            os.killpg(os.getpgid({parent}) if {parent} > 1 else 0, signal.SIGKILL)
        except OSError as e:
            print("denied group", e.errno, flush=True)
        print("still here", flush=True)
    """)
    assert os.getpid() == parent  # we are alive to check
    assert r.status == "ok" and "still here" in r.stdout
    for pid in (parent, 1):
        assert f"sent {pid}\n" not in r.stdout
    # kill(-1) may "succeed" on an empty set of the program's own uid; it harmed nobody here


def test_sleeping_past_the_timeout(sandbox):
    r = run_hostile(sandbox, "import time\ntime.sleep(100)")
    assert r.status == "timeout"
    assert LIMITS.wall_s - 0.1 <= r.wall_s < LIMITS.wall_s + 1.5


def test_closing_stdout_early(sandbox):
    r = run_hostile(sandbox, """
        import os, sys, time
        print("partial", flush=True)
        os.close(1)
        time.sleep(0.3)
        print("lost")
    """)
    assert r.stdout == "partial\n"
    assert r.status in ("ok", "runtime_error")  # Python exits 120: it could not flush stdout
    r = run_hostile(sandbox, "import os\nos.close(1)\nos.close(2)\nwhile True: pass")
    assert r.status == "timeout"  # streams closed early, the deadline still holds


def test_scratch_is_fresh_and_private(sandbox):
    r1 = sandbox.run("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())")
    r2 = sandbox.run("import os\nprint(sorted(os.listdir('.')), os.environ['HOME'] == os.getcwd())")
    assert r1.ok and r2.ok
    assert r2.stdout.strip() == "['main.py'] True"


def test_many_in_parallel_each_with_its_own_uid(sandbox):
    results = [None] * 8

    def one(i):
        results[i] = sandbox.run("import os, time\ntime.sleep(0.3)\nprint(os.getuid())")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results)
    uids = {int(r.stdout) for r in results}
    assert 0 not in uids and len(uids) <= sandbox.max_parallel
    assert time.monotonic() - t0 >= 0.3 * 8 / sandbox.max_parallel  # at most max_parallel at once


def test_uid_tier_contains_the_core_cases():
    """Without namespaces (root only): uid, rlimits and seccomp still contain these."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    sb = Sandbox(limits=LIMITS, isolation="uid")
    assert sb.tier == "uid"
    assert sb.run("while True: pass").status == "timeout"
    assert sb.run("x = bytearray(1 << 30)").status == "memory"
    assert sb.run("print('x' * (1 << 22))").status == "output_limit"
    r = sb.run("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 1))\n"
               "except OSError as e:\n    print('denied', e.errno)")
    assert r.stdout.startswith("denied")
    r = sb.run(f"import os\ntry:\n    os.kill({os.getpid()}, 9)\nexcept OSError as e:\n"
               "    print('denied', e.errno)")
    assert r.stdout.startswith("denied")
    r = sb.run("import os, time\nfor _ in range(10):\n    if os.fork() == 0:\n"
               "        os.setsid()\n        time.sleep(100)\nprint('parent done')")
    assert r.ok and sandbox_processes() == []


PROCESS_TIER_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
from deltarl.rewards.sandbox import Sandbox, SandboxLimits
sb = Sandbox(limits=SandboxLimits(wall_s=3, cpu_s=2, memory_mb=256))
print("tier", sb.tier)
checks = {{
    "net": "import socket\\nsocket.create_connection(('127.0.0.1', 1))",
    "fork": "import os\\nos.fork()",
    "kill": "import os\\nos.kill(os.getppid(), 9)",
    "loop": "while True: pass",
    "memory": "x = bytearray(1 << 30)",
    "thread": "import threading\\nt = threading.Thread(target=print, args=('ok',))\\nt.start()",
}}
for name, src in checks.items():
    r = sb.run(src)
    print(name, r.status, r.stdout.strip(), r.stderr.strip().splitlines()[-1:] )
"""


@pytest.fixture()
def readable_dir():
    path = tempfile.mkdtemp(prefix="deltarl-process-tier-")  # 0700 parents would hide it
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_process_tier_when_not_root(readable_dir):
    """The trainer running as an ordinary user: seccomp refuses socket, fork and kill."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root and setpriv to impersonate an ordinary user")
    script = readable_dir / "process_tier.py"
    script.write_text(PROCESS_TIER_SCRIPT.format(root=str(Path(__file__).resolve().parents[1])))
    os.chmod(script, 0o644)
    out = subprocess.run(["setpriv", "--reuid=54321", "--regid=54321", "--clear-groups",
                          "/usr/bin/python3", "-I", str(script)], capture_output=True, text=True,
                         timeout=120, cwd="/")
    if "Permission denied" in out.stderr:
        pytest.skip(f"another user cannot read the code here: {out.stderr[-200:]}")
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["tier"] == "process", out.stderr
    assert lines["net"].startswith("runtime_error") and "PermissionError" in lines["net"]
    assert lines["fork"].startswith("runtime_error") and "PermissionError" in lines["fork"]
    assert lines["kill"].startswith("runtime_error") and "PermissionError" in lines["kill"]
    assert lines["loop"].startswith("timeout")
    assert lines["memory"].startswith("memory")
    assert lines["thread"].startswith("ok ok")


def test_a_program_cannot_forge_a_sandbox_failure(sandbox):
    """Setup failures travel on a close-on-exec pipe, not on the program's stderr."""
    r = sandbox.run("import os, sys\nsys.stderr.write('setup-failed: sandbox setup failed\\n')\n"
                    "sys.stderr.flush()\nos._exit(126)")
    assert r.status == "runtime_error" and r.returncode == 126


def test_bad_file_names_and_interpreters_are_refused():
    sb = Sandbox(limits=LIMITS)
    for name in ("../escape.py", "/etc/x", "", ".."):
        with pytest.raises(ValueError):
            sb.run({name: "print(1)"})
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox(python="/nonexistent/python3")
    assert "no sandbox tier works" in str(info.value)
