"""The console line of a run: a tqdm bar over steps with a short postfix of the key metrics.

    bar = progress(cfg.run.steps, cfg.run.progress_bar, initial=start_step)
    for step in ...:
        bar.update(metrics)
    bar.close()

    37%|███▋      | 37/100 [01:02<01:46,  0.59step/s, reward=0.412 acc=0.380 ent=1.230 len=37 t=1.7s]

On a terminal it is a live tqdm bar. When the stream is not a terminal (Ray job logs, a file, CI)
a redrawn bar turns into a wall of carriage returns, so it prints one plain line per step instead.
"""
from __future__ import annotations

import sys

from tqdm import tqdm

# (label, metric keys tried in order, format) of the postfix; a metric not in a step is left out.
POSTFIX = (
    ("reward", ("reward/mean", "reward/total"), "{:.3f}"),
    ("acc", ("reward/accuracy/mean", "reward/accuracy", "eval/accuracy"), "{:.3f}"),
    ("ent", ("actor/entropy",), "{:.3f}"),
    ("len", ("response/length_mean", "response/length/mean"), "{:.0f}"),
    ("t", ("time/step_s",), "{:.1f}s"),
)


def format_postfix(metrics: dict) -> str:
    """"reward=0.412 acc=0.380 ent=1.230 len=37 t=1.7s" from a step's metrics."""
    parts = []
    for label, keys, fmt in POSTFIX:
        key = next((k for k in keys if metrics.get(k) is not None), None)
        if key is not None:
            try:
                parts.append(f"{label}={fmt.format(float(metrics[key]))}")
            except (TypeError, ValueError):
                pass
    return " ".join(parts)


class Progress:
    """See `progress`. `update(metrics)` advances one step; `write(text)` prints above the bar."""

    def __init__(self, total: int, enabled: bool = True, *, initial: int = 0, file=None,
                 desc: str | None = None):
        self.total, self.step, self.enabled = total, initial, enabled
        self.file = file if file is not None else sys.stderr
        self.desc = desc
        self.bar = None
        if enabled and _isatty(self.file):
            self.bar = tqdm(total=total, initial=initial, file=self.file, desc=desc, unit="step",
                            dynamic_ncols=True)

    def update(self, metrics: dict | None = None, n: int = 1) -> None:
        self.step += n
        text = format_postfix(metrics or {})
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            head = f"{self.desc} " if self.desc else ""
            print(f"{head}step {self.step}/{self.total} {text}".rstrip(), file=self.file, flush=True)

    def write(self, text: str) -> None:
        """Print a line (an eval result, a checkpoint path) without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        elif self.enabled:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(total: int, enabled: bool = True, *, initial: int = 0, file=None,
             desc: str | None = None) -> Progress:
    """A progress display over `total` steps (`enabled=False`: silent), starting at `initial`
    (the step a resumed run starts from)."""
    return Progress(total, enabled, initial=initial, file=file, desc=desc)
