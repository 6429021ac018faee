"""Prompt datasets from local files: JSONL, JSON, Parquet, and HF `datasets` folders.

`load_prompt_dataset(path, columns={"prompt": "question", "answer": "answer"})` returns
(rows, report). Each row has the mapped columns under their new names, "prompt" as the text
the policy sees (the chat template applied when the tokenizer has one), "messages" (the chat
form), and, with keep_extra, the record's other top-level columns (a reward may use them).
Sources may be dotted paths into nested records ("reward_model.ground_truth").

A row is skipped, counted by reason, and the first few reported when it is not valid JSON, not
an object, lacks a mapped column (or has it null), or its prompt is empty or not a string / a
list of {"role", "content"} messages. Nothing is downloaded: paths are local.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")


@dataclass
class DatasetReport:
    source: str
    total: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few skipped rows, and why

    @property
    def skipped(self) -> int:
        return self.total - self.kept

    def skip(self, index: int, reason: str, detail: str = "", max_examples: int = 5):
        self.reasons[reason] += 1
        if len(self.examples) < max_examples:
            self.examples.append(f"row {index}: {reason}{': ' + detail if detail else ''}")

    def __str__(self) -> str:
        text = f"{self.source}: kept {self.kept} of {self.total} rows"
        if self.skipped:
            text += f"; skipped {self.skipped} ({dict(self.reasons)}); first: {self.examples}"
        return text


class _BadRecord(Exception):
    """A record that could not be read (invalid JSON); carries the reason."""


# --- reading records ----------------------------------------------------------------------------

def _json_lines(path: Path) -> Iterator:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as e:
                yield _BadRecord(f"invalid JSON ({e.msg} at column {e.colno})")


def _json_file(path: Path, split: str) -> Iterator:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError:
        yield from _json_lines(path)  # JSON lines named .json
        return
    if isinstance(data, dict) and isinstance(data.get(split), list):
        data = data[split]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or {{{split!r}: [...]}})")
    yield from data


def _parquet(path: Path) -> Iterator:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _data_file(path: Path, split: str) -> Iterator:
    if path.suffix in (".jsonl", ".ndjson"):
        return _json_lines(path)
    if path.suffix == ".json":
        return _json_file(path, split)
    if path.suffix == ".parquet":
        return _parquet(path)
    raise ValueError(f"unsupported data file {path} (want {', '.join(DATA_SUFFIXES)})")


def _folder(path: Path, split: str) -> Iterator:
    markers = ("dataset_dict.json", "dataset_info.json", "state.json")
    if any((path / m).exists() for m in markers):  # written by datasets' save_to_disk
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r} (has {list(ds)})")
            ds = ds[split]
        yield from ds
        return
    files = sorted(p for p in path.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    in_split = [p for p in files if split in p.relative_to(path).as_posix()]
    if not files:
        raise ValueError(f"{path}: no {', '.join(DATA_SUFFIXES)} files")
    for p in in_split or files:
        yield from _data_file(p, split)


def iter_records(path: str | Path, split: str = "train") -> Iterator:
    """Raw records of a file or folder, in order; unreadable ones as _BadRecord."""
    path = Path(path)
    if path.is_dir():
        return _folder(path, split)
    if not path.exists():
        raise FileNotFoundError(path)
    return _data_file(path, split)


# --- mapping rows -------------------------------------------------------------------------------

def _lookup(record: dict, source: str):
    value = record
    for key in source.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(source)
        value = value[key]
    return value


def _messages(prompt, system_prompt: str | None) -> list[dict] | None:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}] if prompt.strip() else None
    elif isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in prompt):
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        return None
    if messages and system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(messages: list[dict], tokenizer=None) -> str:
    """The prompt text: the tokenizer's chat template (with the generation prompt) when it has
    one, else the message contents joined by blank lines."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)


def load_prompt_dataset(path: str | Path, columns: dict[str, str] | None = None, tokenizer=None,
                        *, system_prompt: str | None = None, split: str = "train",
                        limit: int | None = None, keep_extra: bool = True,
                        max_examples: int = 5) -> tuple[list[dict], DatasetReport]:
    """Rows (dicts) of a local dataset with `columns` {new name: source column} mapped.

    "prompt" is always mapped (default source "prompt"); every mapped column is required.
    `limit` stops after that many kept rows.
    """
    columns = {"prompt": "prompt", **(columns or {})}
    report = DatasetReport(str(path))
    rows: list[dict] = []
    for index, record in enumerate(iter_records(path, split)):
        if limit is not None and len(rows) >= limit:
            break
        report.total += 1
        if isinstance(record, _BadRecord):
            report.skip(index, "invalid JSON", str(record), max_examples)
            continue
        if not isinstance(record, dict):
            report.skip(index, "not an object", type(record).__name__, max_examples)
            continue
        row, missing = {}, None
        for target, source in columns.items():
            try:
                row[target] = _lookup(record, source)
            except KeyError:
                missing = source
                break
            if row[target] is None:
                missing = source
                break
        if missing is not None:
            report.skip(index, f"missing column {missing!r}", "", max_examples)
            continue
        messages = _messages(row["prompt"], system_prompt)
        if messages is None:
            report.skip(index, "bad prompt", f"{type(row['prompt']).__name__} "
                        f"{str(row['prompt'])[:60]!r}", max_examples)
            continue
        try:
            row["prompt"] = render_prompt(messages, tokenizer)
        except Exception as e:  # noqa: BLE001 - a template that rejects a row skips the row
            report.skip(index, "chat template error", f"{type(e).__name__}: {e}", max_examples)
            continue
        row["messages"] = messages
        if keep_extra:
            used = {source.split(".")[0] for source in columns.values()}
            for key, value in record.items():
                if key not in used and key not in row:
                    row[key] = value
        rows.append(row)
        report.kept += 1
    if report.skipped:
        logger.warning("%s", report)
    return rows, report
