"""Running run_rl.py from a benchmark: one job with its overrides, its output kept in a log file."""
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_job(config: str, overrides: list[str], log: Path, timeout: float | None = None) -> Path:
    """Run `run_rl.py --config config overrides...` to the end, write its stdout and stderr to `log`, and return
    its run directory. Raises RuntimeError (the exit code and the end of stderr) when it fails, and
    subprocess.TimeoutExpired past `timeout` seconds."""
    command = [sys.executable, "run_rl.py", "--config", config, *overrides]
    print(" ".join(command), flush=True)
    t0 = time.time()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"run_rl.py exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)
    return Path(re.findall(r"^run directory: (.+)$", proc.stdout, re.M)[-1])
