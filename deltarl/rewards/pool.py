"""Persistent worker processes that run `module:function` calls with hard deadlines.

Why: a call that hangs inside C code (a huge `pow` in sympy, a regex gone exponential) cannot be
interrupted by a signal handler, and `signal.alarm` works only in the main thread, so neither
helps a reward running in a thread pool or a Ray actor. Here each call runs in a separate
process; the caller waits on a pipe with a deadline, and on expiry kills that worker and starts
a fresh one later. Callers may be any thread.

Each worker is `python -m deltarl.rewards._worker REQ_FD RESP_FD` talking newline-delimited JSON over
two private pipes (the function's own prints go to the inherited stdout, not the protocol).
Arguments and results must be JSON values.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding deltarl/


class WorkerTimeout(TimeoutError):
    """The call passed its deadline; its worker was killed."""


class WorkerError(RuntimeError):
    """The function raised inside the worker (message carries its type and text)."""


class _Worker:
    def __init__(self, preload: tuple[str, ...], startup_timeout: float):
        req_r, self._req_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deltarl.rewards._worker", str(req_r), str(resp_w), *preload],
            pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        os.close(req_r)
        os.close(resp_w)
        self._buf = b""
        try:
            ready = self._receive(time.monotonic() + startup_timeout)
        except BaseException:
            self.kill()
            raise
        if ready.get("ready") is not True:
            self.kill()
            raise WorkerError(f"worker failed to start: {ready.get('error')}")

    def call(self, fn: str, args: list, kwargs: dict, timeout: float):
        msg = json.dumps({"fn": fn, "args": args, "kwargs": kwargs}) + "\n"
        os.write(self._req_w, msg.encode())  # small requests; the worker is idle and reading
        reply = self._receive(time.monotonic() + timeout)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply["result"]

    def _receive(self, deadline: float) -> dict:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._resp_r], [], [], left)[0]:
                raise WorkerTimeout("no answer within the deadline")
            chunk = os.read(self._resp_r, 1 << 16)
            if not chunk:
                raise WorkerError(f"worker died (exit code {self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self):
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()
        for fd in (self._req_w, self._resp_r):
            try:
                os.close(fd)
            except OSError:
                pass


class WorkerPool:
    """Up to `size` workers, started lazily; `call` blocks until one is free."""

    def __init__(self, size: int = 2, preload: tuple[str, ...] = (), startup_timeout: float = 120.0):
        self.size, self.preload, self.startup_timeout = size, tuple(preload), startup_timeout
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(size):
            self._idle.put(None)  # a free place with no process yet
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self.restarts = 0  # workers killed on a deadline or found dead
        atexit.register(self.close)

    def call(self, fn: str, *args, timeout: float = 10.0, **kwargs):
        """Run `fn(*args, **kwargs)` (fn as "module:function") in a worker; deadline `timeout` s.

        The deadline counts from when a worker takes the call (not the wait for a free one, nor a
        worker's start-up). Raises WorkerTimeout, WorkerError (the function raised), or whatever
        starting a worker raised.
        """
        worker = self._idle.get()
        try:
            if worker is None:
                worker = _Worker(self.preload, self.startup_timeout)
                with self._lock:
                    self._all.add(worker)
            result = worker.call(fn, list(args), kwargs, timeout)
        except WorkerTimeout:  # (a TimeoutError, hence an OSError: catch it first)
            self._discard(worker)
            worker = None
            raise
        except OSError as e:
            self._discard(worker)
            worker = None
            raise WorkerError(f"worker pipe failed: {e}") from e
        except WorkerError as e:
            if worker is not None and worker.proc.poll() is not None:  # it died, not just raised
                self._discard(worker)
                worker = None
            raise e
        finally:
            self._idle.put(worker)
        return result

    def _discard(self, worker: _Worker | None):
        if worker is None:
            return
        worker.kill()
        with self._lock:
            self._all.discard(worker)
            self.restarts += 1

    def close(self):
        with self._lock:
            workers, self._all = list(self._all), set()
        for w in workers:
            w.kill()
