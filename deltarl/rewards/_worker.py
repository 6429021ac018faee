"""Worker loop for rewards.pool: read a JSON call per line, answer a JSON line.

`python -m deltarl.rewards._worker REQ_FD RESP_FD [module | module:function ...]` imports the listed
modules (and calls the listed warm-up functions) first, so start-up cost is paid before the
first deadline, then answers {"ready": true}.
"""
import asyncio
import importlib
import inspect
import json
import os
import sys


def _resolve(spec: str, cache: dict):
    """The function named "module:function" or "path/to/file.py:function" (the API loader)."""
    if spec not in cache:
        from deltarl.rewards.api import load_reward_fn

        cache[spec] = load_reward_fn(spec)
    return cache[spec]


def main():
    req_fd, resp_fd = int(sys.argv[1]), int(sys.argv[2])
    requests, out = os.fdopen(req_fd, "rb"), os.fdopen(resp_fd, "wb", buffering=0)

    def answer(obj):
        out.write((json.dumps(obj) + "\n").encode())

    try:
        for item in sys.argv[3:]:  # "module" to import, or "module:function" to call once
            if ":" in item:
                _resolve(item, {})()
            else:
                importlib.import_module(item)
    except BaseException as e:  # noqa: BLE001 - report and leave
        answer({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    answer({"ready": True})
    cache = {}
    for line in requests:  # ends when the parent closes the pipe or dies
        msg = json.loads(line)
        try:
            result = _resolve(msg["fn"], cache)(*msg["args"], **msg["kwargs"])
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            reply = {"result": result}
            text = json.dumps(reply)
        except Exception as e:  # noqa: BLE001 - the caller decides what an error means
            text = json.dumps({"error": f"{type(e).__name__}: {e}"})
        out.write((text + "\n").encode())


if __name__ == "__main__":
    main()
