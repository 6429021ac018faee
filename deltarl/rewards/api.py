"""Reward function API: load functions by name, call them safely, combine them with weights.

A reward function is `fn(prompt, response, **fields) -> float | dict` where fields are the
dataset row's other columns (answer, tests, ...), or, batched, `fn(prompts, responses,
**columns) -> list` with one list per column. It may be `async def`. A dict return must hold
"score" (the function's value); its other numeric entries are logged as "<name>/<key>" parts.

A call that raises, runs past its timeout, or returns something that is not a finite number
scores that sample 0.0 and is counted under "<name>/error", "<name>/timeout" or
"<name>/bad_return"; the batch goes on. A hung synchronous call cannot be stopped from Python:
its thread is abandoned (a daemon) and the sample is scored; use `isolated=True` to run the
function in a worker process that is killed at the deadline instead.

Functions are named as a built-in ("math", "code", "format", "countdown", "arithmetic"), as
"package.module:function", or as "path/to/file.py:function".
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

logger = logging.getLogger(__name__)

BUILTINS = {
    "math": "deltarl.rewards.math:math_reward",
    "code": "deltarl.rewards.code:code_reward",
    "format": "deltarl.rewards.format:format_reward",
    "countdown": "deltarl.rewards.synthetic:countdown_reward",
    "arithmetic": "deltarl.rewards.synthetic:arithmetic_reward",
}
FAILURE_REASONS = ("error", "timeout", "bad_return")


class RewardTimeout(TimeoutError):
    """Raised by a reward function that gave up on its own deadline (counted as a timeout)."""


def batched(fn: Callable) -> Callable:
    """Mark `fn` as batched: called once as fn(prompts, responses, **columns) -> list."""
    fn.batched = True
    return fn


# --- loading ------------------------------------------------------------------------------------

_FILE_MODULES: dict[str, Any] = {}
_FILE_LOCK = threading.Lock()


def _load_file_module(path: str):
    path = os.path.abspath(path)
    with _FILE_LOCK:
        if path not in _FILE_MODULES:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"reward file not found: {path}")
            name = "deltarl_reward_" + hashlib.sha1(path.encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _FILE_MODULES[path] = module
        return _FILE_MODULES[path]


def load_reward_fn(spec: str | Callable) -> Callable:
    """The function named by `spec`: a built-in name, "module:function", or "file.py:function"."""
    if callable(spec):
        return spec
    spec = BUILTINS.get(spec, spec)
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"reward function {spec!r}: expected a built-in {sorted(BUILTINS)}, "
                         "'module:function' or 'path/to/file.py:function'")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _load_file_module(target)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"{target} has no function {name!r}")
    return fn


@dataclass
class RewardSpec:
    """One reward in a config: which function, its weight, timeout and settings.

    `kwargs` are passed to every call (they win over row fields of the same name). `batched`
    None means "as the function says" (see `batched`). `isolated` runs each call in a worker
    process (rewards.pool) killed at the deadline; its fields must be JSON values.
    """

    fn: str | Callable
    name: str = ""
    weight: float = 1.0
    timeout_s: float = 60.0
    kwargs: dict = field(default_factory=dict)
    batched: bool | None = None
    isolated: bool = False

    def __post_init__(self):
        if not self.name:
            if callable(self.fn):
                self.name = getattr(self.fn, "__name__", "reward")
            else:
                self.name = self.fn if self.fn in BUILTINS else self.fn.rpartition(":")[2]
        if self.isolated and callable(self.fn):
            raise ValueError(f"{self.name}: isolated rewards must be named by a string spec")
        self._fn = None

    @classmethod
    def from_config(cls, cfg: str | dict | RewardSpec) -> RewardSpec:
        """From a config entry: "math", or {fn: code, weight: 0.5, timeout_s: 30, mode: all}.

        Keys other than fn/name/weight/timeout_s/timeout/batched/isolated/kwargs go to kwargs.
        """
        if isinstance(cfg, RewardSpec):
            return cfg
        if isinstance(cfg, str) or callable(cfg):
            return cls(fn=cfg)
        cfg = dict(cfg)
        fn = cfg.pop("fn", None) or cfg.pop("function", None)
        if fn is None:
            raise ValueError(f"reward config {cfg} has no 'fn'")
        kwargs = dict(cfg.pop("kwargs", None) or {})
        known = {k: cfg.pop(k) for k in ("name", "weight", "batched", "isolated") if k in cfg}
        if "timeout" in cfg or "timeout_s" in cfg:
            known["timeout_s"] = float(cfg.pop("timeout_s", cfg.pop("timeout", 60.0)))
        kwargs.update(cfg)
        return cls(fn=fn, kwargs=kwargs, **known)

    def resolve(self) -> Callable:
        if self._fn is None:
            self._fn = load_reward_fn(self.fn)
        return self._fn

    @property
    def is_batched(self) -> bool:
        return bool(self.batched if self.batched is not None
                    else getattr(self.resolve(), "batched", False))


class RewardBatch(NamedTuple):
    """totals[i] = sum of weight * parts[name][i]; failures["<name>/<reason>"] = count."""

    totals: list[float]
    parts: dict[str, list[float]]
    failures: dict[str, int]

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Means of the total and of every part, and the failure counts, for logging."""
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
        out = {f"{prefix}/total": mean(self.totals)}
        out.update({f"{prefix}/{k}": mean(v) for k, v in self.parts.items()})
        out.update({f"{prefix}_fail/{k}": float(v) for k, v in self.failures.items()})
        return out


# --- calling ------------------------------------------------------------------------------------

class _BadReturn(ValueError):
    pass


def _as_number(x) -> float:
    """float(x) for real numbers, numpy scalars and one-element tensors; else _BadReturn."""
    value = None
    if isinstance(x, numbers.Real):
        value = float(x)
    elif hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            value = float(x.item())
        except (TypeError, ValueError, RuntimeError):
            value = None
    if value is None or not math.isfinite(value):
        raise _BadReturn(f"not a finite number: {str(x)[:80]!r}")
    return value


def _normalize(value) -> tuple[float, dict[str, float]]:
    """(score, extra parts) from a function's return value; raises _BadReturn."""
    if isinstance(value, dict):
        if "score" not in value:
            raise _BadReturn(f"dict without 'score': keys {sorted(value)[:8]}")
        return _as_number(value["score"]), {k: _as_number(v) for k, v in value.items()
                                            if k != "score"}
    return _as_number(value), {}


def _field_filter(fn) -> Callable[[dict], dict]:
    """Keep only the fields `fn` can take (all of them if it has **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return lambda fields: fields
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return lambda fields: fields
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return lambda fields: {k: v for k, v in fields.items() if k in names}


def _with_deadline(call: Callable[[], Any], timeout: float):
    """Run call() in a daemon thread; (value, None) or (exception | None, reason)."""
    box = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 - the reward's failure is data here
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="reward-call")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, "timeout"
    if "error" in box:
        return box["error"], "timeout" if isinstance(box["error"], (RewardTimeout,
                                                                     TimeoutError)) else "error"
    return box["value"], None


_ISOLATED_POOL = None
_ISOLATED_LOCK = threading.Lock()


def _isolated_pool():
    global _ISOLATED_POOL
    from .pool import WorkerPool

    with _ISOLATED_LOCK:
        if _ISOLATED_POOL is None:
            _ISOLATED_POOL = WorkerPool(size=max(1, min(8, os.cpu_count() or 1)))
        return _ISOLATED_POOL


class _Runner:
    """Calls one spec over a batch and records scores, extra parts and failures."""

    def __init__(self, spec: RewardSpec, n: int):
        self.spec, self.n = spec, n
        self.scores = [0.0] * n
        self.extras: dict[str, list[float]] = {}
        self.failures = {reason: 0 for reason in FAILURE_REASONS}
        self._lock = threading.Lock()
        self._logged = 0

    def record(self, i: int, value, reason: str | None):
        with self._lock:
            if reason is None:
                try:
                    score, extras = _normalize(value)
                except _BadReturn as e:
                    value, reason = e, "bad_return"
                else:
                    self.scores[i] = score
                    for key, x in extras.items():
                        self.extras.setdefault(key, [0.0] * self.n)[i] = x
                    return
            self.failures[reason] += 1
            if self._logged < 3:  # a few examples per batch, not a flood
                self._logged += 1
                logger.warning("reward %r sample %d: %s (%r)", self.spec.name, i, reason, value)

    # one sample, sync or isolated
    def call_one(self, i, prompt, response, fields):
        spec = self.spec
        if spec.isolated:
            from .pool import WorkerTimeout

            def call():
                try:
                    return _isolated_pool().call(BUILTINS.get(spec.fn, spec.fn), prompt, response,
                                                 timeout=spec.timeout_s, **fields)
                except WorkerTimeout as e:
                    raise RewardTimeout(str(e)) from e
            value, reason = _with_deadline(call, spec.timeout_s + 30.0)  # + a worker's start-up
        else:
            fn = spec.resolve()
            value, reason = _with_deadline(lambda: fn(prompt, response, **fields), spec.timeout_s)
        self.record(i, value, reason)

    # all samples of an async function, concurrently on one event loop
    def call_async(self, prompts, responses, fields_list, concurrency: int):
        fn, timeout = self.spec.resolve(), self.spec.timeout_s
        done: set[int] = set()

        async def one(i, sem):
            async with sem:
                try:
                    value = await asyncio.wait_for(fn(prompts[i], responses[i], **fields_list[i]),
                                                   timeout)
                    self.record(i, value, None)
                except (asyncio.TimeoutError, RewardTimeout) as e:
                    self.record(i, e, "timeout")
                except Exception as e:  # noqa: BLE001
                    self.record(i, e, "error")
                done.add(i)

        async def main():
            sem = asyncio.Semaphore(concurrency)
            await asyncio.gather(*(one(i, sem) for i in range(self.n)))

        # a coroutine that blocks the loop defeats wait_for: bound the whole loop as well
        rounds = -(-self.n // max(1, concurrency))
        _, reason = _with_deadline(lambda: asyncio.run(main()), timeout * rounds + 5.0)
        if reason == "timeout":
            for i in range(self.n):
                if i not in done:
                    self.record(i, "event loop blocked", "timeout")

    def call_batched(self, prompts, responses, columns):
        fn = self.spec.resolve()
        if inspect.iscoroutinefunction(fn):
            call = lambda: asyncio.run(asyncio.wait_for(fn(prompts, responses, **columns),
                                                        self.spec.timeout_s))
        else:
            call = lambda: fn(prompts, responses, **columns)
        value, reason = _with_deadline(call, self.spec.timeout_s)
        if reason is None:
            try:
                value = list(value)
            except TypeError:
                value, reason = _BadReturn(f"batched reward returned {type(value).__name__}"), \
                    "bad_return"
            else:
                if len(value) != self.n:
                    value, reason = _BadReturn(f"batched reward returned {len(value)} values for "
                                               f"{self.n} samples"), "bad_return"
        if reason is not None:
            for i in range(self.n):
                self.record(i, value, reason)
        else:
            for i, v in enumerate(value):
                self.record(i, v, None)


def compute_rewards(prompts: list[str], responses: list[str], rows: list[dict] | None = None,
                    specs=("math",), max_workers: int | None = None) -> RewardBatch:
    """Score every (prompt, response) with every spec; never raises for a reward's failure.

    rows[i] holds the fields of sample i (its dataset row: answer, tests, ...). Calls run
    concurrently in `max_workers` threads (default 4 x cores, at most 32). Returns
    RewardBatch(totals, parts, failures): parts[name] are unweighted scores, totals the
    weighted sums, failures["<name>/<reason>"] counts for every spec and reason.
    """
    n = len(prompts)
    if len(responses) != n or (rows is not None and len(rows) != n):
        raise ValueError(f"{n} prompts, {len(responses)} responses, "
                         f"{len(rows) if rows is not None else n} rows: lengths must match")
    rows = rows if rows is not None else [{} for _ in range(n)]
    specs = [RewardSpec.from_config(s) for s in ([specs] if isinstance(specs, (str, dict))
                                                 else specs)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")
    workers = max_workers or min(32, 4 * (os.cpu_count() or 1))
    base = [{k: v for k, v in row.items() if k not in ("prompt", "response")} for row in rows]
    runners = [_Runner(s, n) for s in specs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward") as pool:
        futures = []
        for runner in runners:
            spec = runner.spec
            keep = _field_filter(spec.resolve())
            if spec.isolated and spec.is_batched:
                raise ValueError(f"{spec.name}: isolated applies to per-sample functions only")
            if spec.is_batched:
                keys = list(dict.fromkeys(k for row in base for k in row))
                columns = keep({**{k: [row.get(k) for row in base] for k in keys},
                                **spec.kwargs})
                futures.append(pool.submit(runner.call_batched, prompts, responses, columns))
            elif inspect.iscoroutinefunction(spec.resolve()) and not spec.isolated:
                fields = [keep({**row, **spec.kwargs}) for row in base]
                futures.append(pool.submit(runner.call_async, prompts, responses, fields, workers))
            else:
                for i in range(n):
                    futures.append(pool.submit(runner.call_one, i, prompts[i], responses[i],
                                               keep({**base[i], **spec.kwargs})))
        for f in futures:
            f.result()
    parts, failures = {}, {}
    totals = [0.0] * n
    for runner in runners:
        name, w = runner.spec.name, runner.spec.weight
        parts[name] = runner.scores
        for key, values in runner.extras.items():
            parts[f"{name}/{key}"] = values
        for reason, count in runner.failures.items():
            failures[f"{name}/{reason}"] = count
        for i, s in enumerate(runner.scores):
            totals[i] += w * s
    return RewardBatch(totals, parts, failures)
