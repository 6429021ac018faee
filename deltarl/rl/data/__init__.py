"""rl.data: prompt datasets from local files, and built-in synthetic tasks with exact answers."""
from .datasets import DatasetReport, iter_records, load_prompt_dataset, render_prompt
from .tasks import TASKS, arithmetic, code_io, countdown, make_task, math_word

__all__ = ["DatasetReport", "iter_records", "load_prompt_dataset", "render_prompt", "TASKS",
           "arithmetic", "code_io", "countdown", "make_task", "math_word"]
