"""Results files keep their history: the new report on top, the reports it replaced below it, under
"## Earlier runs", newest first."""
from pathlib import Path

EARLIER = "## Earlier runs"


def previous_report(path) -> str:
    """What the results file at `path` holds now ("" when there is none); read it before a run rewrites it."""
    path = Path(path)
    return path.read_text() if path.exists() else ""


def with_earlier_runs(text: str, previous: str) -> str:
    """`text` (a new report, its '# title' line first), then under EARLIER the report `previous` held
    (its title dropped) and that report's own earlier runs."""
    current, _, earlier = previous.partition(f"\n{EARLIER}\n")
    body = current.split("\n", 1)[1].strip() if "\n" in current else ""
    parts = [part for part in (body, earlier.strip()) if part]
    return text.rstrip("\n") + "\n" + (f"\n{EARLIER}\n\n" + "\n\n".join(parts) + "\n" if parts else "")


RESULTS = Path(__file__).resolve().parent / "results"


def write_results(filename: str, text: str, folders):
    """Write report `text` as `filename` into each of `folders` (benchmarks/results, the device tool's $OUT),
    with the earlier runs of the committed benchmarks/results/`filename` below it."""
    full = with_earlier_runs(text, previous_report(RESULTS / filename))
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / filename).write_text(full)
