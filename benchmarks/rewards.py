"""Reward throughput on this machine: sandboxed programs/s and math verifications/s, in this process and
through reward-worker actors (rl.reward_workers) with 1, 2 and all cores.

    python benchmarks/rewards.py [--quick] [--out FILE]

Prints a markdown table and writes it, with the machine's description, to benchmarks/results/rewards_cpu.md
(the GPU machine: pass --out benchmarks/results/rewards_<host>.md). The file opens with the current table;
the tables it held before move below it, under "Earlier runs". Takes about two minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import previous_report, with_earlier_runs  # noqa: E402
from deltarl.rewards import MathVerifier, RewardSpec, Sandbox, compute_rewards  # noqa: E402
from deltarl.rewards.math import check_response  # noqa: E402
from deltarl.rl.data import make_task  # noqa: E402
from deltarl.rl.reward_workers import RewardWorkerPool  # noqa: E402

SUM_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
SUM_TESTS = {"inputs": ["1 2\n", "10 -3\n", "0 0\n", "5 5\n"], "outputs": ["3\n", "7\n", "0\n", "10\n"]}
CALL_TESTS = {"fn_name": "add", "inputs": [[1, 2], [10, -3], [0, 0], [5, 5]], "outputs": [3, 7, 0, 10]}
CALL_PROGRAM = "def add(a, b):\n    return a + b\n"

def math_case(i: int) -> tuple[str, str]:
    """A distinct (response, gold) pair per i, cycling through the common answer forms (GSM8K
    prose, MATH LaTeX, sets, intervals, polynomials, percentages, a trap); distinct so that
    math-verify's parse caches do not flatter the numbers."""
    a, b = 2 + i % 97, 3 + (i * 7) % 89
    forms = [
        (f"So in total {a} + {b} = {a + b} clips.\n#### {a + b}", f"{a + b}"),
        (f"The answer is {a}.5", f"\\frac{{{2 * a + 1}}}{{2}}"),
        (f"\\boxed{{\\frac{{{a}}}{{4}}}}", f"{a / 4}"),
        (f"\\boxed{{\\{{{a}, {b}\\}}}}", f"\\{{{b},{a}\\}}"),
        (f"\\boxed{{({a}, {a + b}]}}", f"({a},{a + b}]"),
        (f"\\boxed{{x^2 + {2 * a}x + {a * a}}}", f"(x+{a})^2"),
        (f"\\boxed{{{a}\\sqrt{{2}}}}", f"\\sqrt{{{2 * a * a}}}"),
        (f"She has ${a},{b:03d} left.\nAnswer: ${a},{b:03d}", f"{a * 1000 + b}"),
        (f"\\boxed{{{a}\\%}}", f"{a}"),
        (f"\\boxed{{{a}{b}}}", f"{a}"),  # the right digits, a wrong number
    ]
    return forms[i % len(forms)]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {usable_cores()} usable cores of {os.cpu_count()}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.1f}"


def bench_sandbox(n: int, parallel: int) -> tuple[float, str]:
    sb = Sandbox(max_parallel=parallel)
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: sb.run(SUM_PROGRAM, stdin="1 2\n"), range(parallel)))  # warm
        t0 = time.perf_counter()
        results = list(pool.map(lambda _: sb.run(SUM_PROGRAM, stdin="1 2\n"), range(n)))
        elapsed = time.perf_counter() - t0
    assert all(r.ok and r.stdout == "3\n" for r in results), results[0]
    return elapsed, sb.tier


def bench_code_reward(n: int, tests: dict, program: str, parallel: int) -> float:
    sb = Sandbox(max_parallel=parallel)
    response = f"```python\n{program}```"
    spec = RewardSpec("code", kwargs={"sandbox": sb})
    t0 = time.perf_counter()
    batch = compute_rewards(["p"] * n, [response] * n, [{"tests": json.dumps(tests)}] * n, [spec],
                            max_workers=2 * parallel)
    elapsed = time.perf_counter() - t0
    assert batch.parts["code"] == [1.0] * n, batch.failures
    return elapsed


def bench_math_inline(n: int) -> float:
    check_response(*math_case(-1), soft_timeout=5)  # imports, first-call set-up
    t0 = time.perf_counter()
    for i in range(n):
        check_response(*math_case(i), soft_timeout=5)
    return time.perf_counter() - t0


def bench_math_pool(n: int, workers: int) -> float:
    v = MathVerifier(workers=workers)
    try:
        with ThreadPoolExecutor(4 * workers) as pool:
            list(pool.map(lambda i: v.check(*math_case(-1 - i)), range(4 * workers)))  # warm
            t0 = time.perf_counter()
            results = list(pool.map(lambda i: v.check(*math_case(n + i)), range(n)))
            assert sum(r["correct"] for r in results) == n - n // 10  # every tenth is the trap
            return time.perf_counter() - t0
    finally:
        v.close()


def bench_synthetic(n: int) -> float:
    rows = make_task("countdown", n, seed=0, difficulty=2)
    t0 = time.perf_counter()
    compute_rewards([r["prompt"] for r in rows], [r["answer"] for r in rows], rows, ["countdown"])
    return time.perf_counter() - t0


def usable_cores() -> int:
    """The cores this process may run on (a container's limit, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_counts() -> list[int]:
    """1, 2 and all cores (as many distinct counts as this machine has)."""
    return sorted({1, min(2, usable_cores()), usable_cores()})


def bench_workers(kind: str, n: int, workers: int) -> tuple[float, float]:
    """One batch of n samples scored by `workers` reward-worker actors of 1 CPU each:
    (wall seconds, this driver's own CPU seconds). kind "code": 4 stdin/stdout tests per sample (4
    sandboxed programs); "math": one math-verify check per sample."""

    if kind == "code":
        spec = RewardSpec("code", kwargs={"mode": "fraction"})
        responses, rows = [f"```python\n{SUM_PROGRAM}```"] * n, [{"tests": SUM_TESTS}] * n
    else:
        spec = RewardSpec("math")
        cases = [math_case(10_000 * workers + i) for i in range(n)]
        responses, rows = [c[0] for c in cases], [{"answer": c[1]} for c in cases]
    pool = RewardWorkerPool([spec], num_workers=workers, cpus_per_worker=1)
    try:
        pool.score(["p"] * 4 * workers, responses[:4 * workers], rows[:4 * workers])   # start-up, imports
        t0, cpu0 = time.perf_counter(), time.process_time()
        batch = pool.score(["p"] * n, responses, rows)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        pool.close()
    if kind == "code":
        assert batch.parts["code"] == [1.0] * n, batch.failures
    else:
        assert sum(batch.parts["math"]) == n - n // 10, batch.failures       # every tenth is the trap
    return elapsed, cpu


def bench_driver_cpu(kind: str, n: int) -> tuple[float, float]:
    """The same batch scored in this process (reward.num_workers=0): (wall s, this process's CPU s)."""
    if kind == "code":
        spec = RewardSpec("code", kwargs={"mode": "fraction"})
        responses, rows = [f"```python\n{SUM_PROGRAM}```"] * n, [{"tests": SUM_TESTS}] * n
    else:
        spec = RewardSpec("math")
        cases = [math_case(50_000 + i) for i in range(n)]
        responses, rows = [c[0] for c in cases], [{"answer": c[1]} for c in cases]
    compute_rewards(["p"] * 4, responses[:4], rows[:4], [spec])
    t0, cpu0 = time.perf_counter(), time.process_time()
    compute_rewards(["p"] * n, responses, rows, [spec])
    return time.perf_counter() - t0, time.process_time() - cpu0


def worker_rows(scale: float) -> list[tuple]:
    """Table rows of the reward-worker benchmarks (a local Ray with this machine's cores)."""
    import ray

    n_code, n_math = max(8, int(64 * scale)), max(40, int(400 * scale))
    ray.init(num_cpus=usable_cores(), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for kind, n, unit, per in (("code", n_code, "programs/s", 4), ("math", n_math, "checks/s", 1)):
            elapsed, cpu = bench_driver_cpu(kind, n)
            rows.append((f"{kind} reward in the driver (reward.num_workers=0); driver CPU {1000 * cpu:.0f} ms "
                         f"per batch of {n}", per * n, elapsed, unit))
            for workers in worker_counts():
                elapsed, cpu = bench_workers(kind, n, workers)
                rows.append((f"{kind} reward, {workers} reward worker(s) of 1 CPU; driver CPU {1000 * cpu:.0f} ms "
                             f"per batch of {n}", per * n, elapsed, unit))
    finally:
        ray.shutdown()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rewards_cpu.md"))
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    n_prog, n_math = int(120 * scale), int(400 * scale)
    rows = []
    tier = None
    for parallel in (1, 2, 4):
        elapsed, tier = bench_sandbox(n_prog, parallel)
        rows.append((f"sandbox: `a+b` stdin program, {parallel} at a time", n_prog, elapsed,
                     "programs/s"))
    n_samples = max(4, n_prog // 4)
    for parallel in (2, 4):
        elapsed = bench_code_reward(n_samples, SUM_TESTS, SUM_PROGRAM, parallel)
        rows.append((f"code reward, 4 stdin/stdout tests (4 programs/sample), {parallel} at a time",
                     4 * n_samples, elapsed, "programs/s"))
    elapsed = bench_code_reward(n_samples, CALL_TESTS, CALL_PROGRAM, 2)
    rows.append(("code reward, 4 function-call tests (1 program/sample), 2 at a time",
                 n_samples, elapsed, "samples/s"))
    elapsed = bench_math_inline(n_math)
    rows.append(("math-verify inline (main thread, no hard deadline)", n_math, elapsed,
                 "verifications/s"))
    for workers in (1, 2):
        elapsed = bench_math_pool(n_math, workers)
        rows.append((f"math reward via worker pool, {workers} worker(s), hard deadline", n_math,
                     elapsed, "verifications/s"))
    n_syn = int(5000 * scale)
    rows.append(("countdown checker through compute_rewards", n_syn, bench_synthetic(n_syn),
                 "samples/s"))
    rows += worker_rows(scale)

    desc = machine()
    lines = ["| benchmark | n | seconds | throughput |", "|---|---:|---:|---:|"]
    for name, n, seconds, unit in rows:
        lines.append(f"| {name} | {n} | {seconds:.2f} | {rate(n, seconds)} {unit} |")
    table = "\n".join(lines)
    text = (f"# Reward throughput (CPU)\n\nMachine: {desc}. Sandbox tier: `{tier}`.\n"
            f"Generated by `python benchmarks/rewards.py` on {time.strftime('%Y-%m-%d')}.\n\n"
            f"{table}\n")
    print(f"Machine: {desc}; sandbox tier: {tier}\n")
    print(table)
    if not args.quick:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(with_earlier_runs(text, previous_report(out)))
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
