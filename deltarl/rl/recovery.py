"""Keeping a run alive when its actors die: how many failures in a row it may take, and its record of them.

A rollout engine that dies is restarted by Ray and reloaded by the driver (`rl.engines`); a learner rank
that dies takes its group down, and the trainer starts a new group from the last checkpoint
(`rl.trainer`). Either way the same work is redone with the same seeds, so the run ends where an
undisturbed one ends. `FailureBudget` stops a run that keeps failing at the same place: more than
`run.max_restarts` failures of one actor without the run getting past the step where the last one
happened ends the job with `RunFailure`, naming the actor and the cause.
"""
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

EVENTS_FILE = "events.jsonl"


class RunFailure(RuntimeError):
    """An actor failed more than `run.max_restarts` times in a row: the run stops."""


@dataclass
class FailureBudget:
    limit: int                                        # run.max_restarts
    step: int = 0                                     # the step the run is in (set by the trainer)
    in_a_row: dict = field(default_factory=dict)      # actor -> (failures, step of the last one)

    def record(self, who: str, error: BaseException):
        """Count a failure of `who`; raise RunFailure once it is past the limit."""
        count = self.in_a_row.get(who, (0, 0))[0] + 1
        self.in_a_row[who] = (count, self.step)
        if count > self.limit:
            raise RunFailure(f"{who} failed {count} time{'s' if count > 1 else ''} in a row (run.max_restarts={self.limit}); the last "
                             f"cause: {describe(error)}") from error

    def step_done(self, step: int):
        """A step completed: failures that happened at or before it no longer count as in a row."""
        self.in_a_row = {who: (n, at) for who, (n, at) in self.in_a_row.items() if at > step}


def describe(error: BaseException) -> str:
    """One line: a dead process, or the exception raised in the actor (its remote traceback stays chained)."""
    import ray
    if isinstance(error, ray.exceptions.RayActorError):
        text = str(error).strip().splitlines()
        return f"its process died ({type(error).__name__}{': ' + text[0][:200] if text else ''})"
    cause = getattr(error, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause)[:300]}"
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


def log_event(run_dir: Path, event: str, message: str, **fields):
    """Print `message` and append {"time", "event", "message", **fields} to run_dir/events.jsonl: the
    run's record of restarts and redone steps."""
    print(f"[deltarl] {message}", flush=True)
    record = {"time": round(time.time(), 3), "event": event, "message": message, **fields}
    with open(Path(run_dir) / EVENTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
