"""Sandbox launcher: the process between the trainer and an untrusted program.

Run as `python -I -S _launcher.py SPEC_FD`, standard library only (it is started by path, never
imported by the package). It reads a spec (a dict in `marshal` format: builtin, so nothing to
import; json would pull in `re`, a third of the start-up) from the inherited descriptor SPEC_FD,

1. (namespace tier) makes every mount private, puts a small fresh tmpfs on /tmp holding the
   scratch directory, and remounts every other mount read-only, so the program can write to its
   scratch directory and nowhere else;
2. writes the program's files into the scratch directory;
3. forks the program: the child sets resource limits, drops to the sandbox uid/gid (when the
   spec names one), installs a seccomp filter, changes into the scratch directory and execs the
   interpreter with a scrubbed environment;
4. waits for the program, and writes a marshalled report (exit code or signal, CPU seconds,
   peak RSS, setup error) to the status descriptor, which the program never sees.

In the namespace tier the launcher is PID 1 of a fresh PID namespace, so when it exits the
kernel kills every process the program left behind. Why a separate script instead of
`preexec_fn`: the trainer is multi-threaded, and `preexec_fn` is not safe after fork in a
threaded parent; here the fork happens in this single-threaded process.
"""
import ctypes
import errno
import marshal
import os
import resource
import signal
import struct
import sys

# Linux constants (include/uapi/linux/mount.h, prctl.h, seccomp.h, filter.h, audit.h).
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER = 1, 38, 22, 36
SECCOMP_MODE_FILTER = 2
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
CLONE_THREAD = 0x00010000

# Syscall numbers of the two architectures we filter; anything else runs without seccomp.
ARCHES = {
    "x86_64": dict(audit=0xC000003E, socket=41, io_uring_setup=425, kill=62, tkill=200, tgkill=234,
                   rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424, ptrace=101,
                   process_vm_readv=310, process_vm_writev=311, fork=57, vfork=58, clone=56,
                   clone3=435),
    "aarch64": dict(audit=0xC00000B7, socket=198, io_uring_setup=425, kill=129, tkill=130,
                    tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, pidfd_send_signal=424,
                    ptrace=117, process_vm_readv=270, process_vm_writev=271, clone=220,
                    clone3=435),
}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def mount_points():
    """Mount points of this mount namespace, outermost first (from /proc/self/mountinfo)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 etc. in odd paths
            points.append((point, fields[5].split(",")))
    return points


def confine_filesystem(scratch, scratch_mb):
    """Private mounts, a fresh tmpfs on /tmp holding `scratch`, everything else read-only."""
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    tmp = os.path.dirname(scratch)
    mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, f"size={scratch_mb}m,mode=0755")
    os.mkdir(scratch, 0o700)
    for point, opts in mount_points():
        if point == tmp or point.startswith(tmp + "/") or "ro" in opts:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
        flags |= MS_NODEV if "nodev" in opts else 0
        flags |= MS_NOEXEC if "noexec" in opts else 0
        try:
            mount("none", point, None, flags)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES):  # a mount hidden under another
                raise


def seccomp_filter(deny_sockets, deny_fork, deny_signals):
    """BPF program: kill foreign-ABI syscalls, fail the denied ones with EPERM/EACCES."""
    arch = ARCHES.get(os.uname().machine)
    if arch is None:
        return None
    ins = lambda code, k, jt=0, jf=0: struct.pack("HBBI", code, jt, jf, k)
    prog = [ins(BPF_LD_W_ABS, 4), ins(BPF_JEQ_K, arch["audit"], 1, 0), ins(BPF_RET_K, RET_KILL_PROCESS),
            ins(BPF_LD_W_ABS, 0)]
    if os.uname().machine == "x86_64":  # x32 ABI syscalls carry bit 30: refuse them all
        prog += [ins(BPF_JGE_K, 0x40000000, 0, 1), ins(BPF_RET_K, RET_KILL_PROCESS)]
    denied = []
    if deny_sockets:
        denied += [("socket", errno.EACCES), ("io_uring_setup", errno.ENOSYS)]
    if deny_signals:
        denied += [(n, errno.EPERM) for n in ("kill", "tkill", "tgkill", "rt_sigqueueinfo",
                                              "rt_tgsigqueueinfo", "pidfd_send_signal", "ptrace",
                                              "process_vm_readv", "process_vm_writev")]
    if deny_fork:
        denied += [(n, errno.EPERM) for n in ("fork", "vfork") if n in arch]
        denied += [("clone3", errno.ENOSYS)]  # libc falls back to clone, whose flags we can read
    for name, err in denied:
        prog += [ins(BPF_JEQ_K, arch[name], 0, 1), ins(BPF_RET_K, RET_ERRNO | err)]
    if deny_fork:  # clone without CLONE_THREAD makes a process; with it, a thread (allowed)
        prog += [ins(BPF_JEQ_K, arch["clone"], 0, 4), ins(BPF_LD_W_ABS, 16),
                 ins(BPF_JSET_K, CLONE_THREAD, 1, 0), ins(BPF_RET_K, RET_ERRNO | errno.EPERM),
                 ins(BPF_RET_K, RET_ALLOW)]
    prog.append(ins(BPF_RET_K, RET_ALLOW))
    return prog


def install_seccomp(prog):
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(b"".join(prog))
    fprog = SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


# Guard used only when seccomp is unavailable: patched into the program's interpreter before
# its code runs. It is in-process, so a determined program can undo it; the docs say so.
SOCKET_GUARD = (
    "import _socket, socket\n"
    "class _Denied(_socket.socket):\n"
    "    def __init__(self, *a, **k): raise PermissionError(13, 'network denied by sandbox')\n"
    "_socket.socket = socket.socket = socket.SocketType = _Denied\n"
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def set_limits(limits):
    for name, value in limits.items():
        res = getattr(resource, "RLIMIT_" + name.upper())
        soft, hard = (value, value) if not isinstance(value, list) else value
        resource.setrlimit(res, (soft, hard))


def run_child(spec, status_fd, notes_fd, launcher_pid):
    """In the forked child: limits, identity, seccomp, exec. Never returns.

    Problems are written to `notes_fd`, a close-on-exec pipe only the launcher reads: once the
    program runs it cannot reach it, so it cannot forge a setup failure or a note.
    """
    try:
        os.close(status_fd)
        set_limits(spec["rlimits"])
        uid, gid = spec.get("uid"), spec.get("gid")
        if uid is not None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # cleared by the uid change
        if os.getppid() != launcher_pid:  # the launcher died before the line above
            os._exit(125)
        os.chdir(spec["scratch"])
        argv = [spec["python"], *spec["python_flags"]]
        sec = spec["seccomp"]
        prog = seccomp_filter(sec["deny_sockets"], sec["deny_fork"], sec["deny_signals"]) \
            if sec["enabled"] else None
        if prog is not None:
            try:
                install_seccomp(prog)
            except OSError as e:  # e.g. a kernel or runtime without seccomp filters
                os.write(notes_fd, f"seccomp-failed: {e}\n".encode())
                prog = None
        if prog is not None:
            argv += spec["argv"]
        elif sec["deny_sockets"]:
            argv += ["-c", SOCKET_GUARD, *spec["argv"]]
        else:
            argv += spec["argv"]
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(argv[0], argv, spec["env"])
    except BaseException as e:  # noqa: BLE001 - report anything, then leave without cleanup
        try:
            os.write(notes_fd, f"setup-failed: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(126)


def kill_and_reap(uid):
    """Kill everything the program left (all of the run's uid), then reap every child.

    The launcher is a child subreaper, so orphans of the program are re-parented here, not to
    the machine's init (which may reap late: zombies still count against RLIMIT_NPROC).
    kill(-1) from a process of that uid signals all of the uid's processes at once; a fork in
    flight is aborted by the pending SIGKILL, so fork bombs cannot outrun it.
    """
    if uid is not None:
        helper = os.fork()
        if helper == 0:
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def main():
    spec_fd = int(sys.argv[1])
    with os.fdopen(spec_fd, "rb") as f:
        spec = marshal.loads(f.read())
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)
    report = {"exit": None, "signal": None, "cpu_s": 0.0, "maxrss_kb": 0, "setup_error": None,
              "seccomp": False}
    try:
        if spec["pid_namespace"] is False:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the trainer
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # adopt the program's orphans
        if spec["private_tmp"]:
            confine_filesystem(spec["scratch"], spec["scratch_mb"])
        for name, text in spec["files"].items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"file names must be plain names, not {name!r}")
            path = os.path.join(spec["scratch"], name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644),
                      "w", encoding="utf-8") as f:
                f.write(text)
            if spec.get("uid") is not None:
                os.chown(path, spec["uid"], spec["gid"])
        if spec.get("uid") is not None:
            os.chown(spec["scratch"], spec["uid"], spec["gid"])
            os.chmod(spec["scratch"], 0o700)
        sec = spec["seccomp"]
        report["seccomp"] = bool(sec["enabled"] and seccomp_filter(False, False, False) is not None)
        notes_r, notes_w = os.pipe()  # close-on-exec: the program never holds it
        launcher_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(notes_r)
            run_child(spec, status_fd, notes_w, launcher_pid)
        os.close(notes_w)
        _, status, usage = os.wait4(pid, 0)
        notes = os.read(notes_r, 65536).decode(errors="replace")  # closed by exec or exit
        os.close(notes_r)
        for line in notes.splitlines():
            if line.startswith("seccomp-failed:"):
                report["seccomp"] = False
            elif line.startswith("setup-failed:"):
                report["setup_error"] = line.split(":", 1)[1].strip()
        if os.WIFEXITED(status):
            report["exit"] = os.WEXITSTATUS(status)
        else:
            report["signal"] = os.WTERMSIG(status)
        report["cpu_s"] = usage.ru_utime + usage.ru_stime
        report["maxrss_kb"] = usage.ru_maxrss
        kill_and_reap(spec.get("uid"))
    except BaseException as e:  # noqa: BLE001
        report["setup_error"] = f"{type(e).__name__}: {e}"
    os.write(status_fd, marshal.dumps(report))
    os.close(status_fd)


if __name__ == "__main__":
    main()
