#!/usr/bin/env python3
"""Echo agent: a minimal, copyable Hive agent for the `stdio` driver.

It speaks the stdio agent protocol, version 1 (see docs/agent-protocol.md):
JSON Lines on stdin (from Hive) and stdout (to Hive). Python 3 standard
library only. To run it under Hive, add a pool to hive.toml:

    [[pools]]
    role = "echo"
    driver = "stdio"
    size = 2
    capacity = 4
    command = "python3"
    args = ["examples/agents/echo_agent.py"]

To write your own agent, copy this file and replace `handle()`.
Everything else (hello/ready, heartbeats, cancel, shutdown) can stay as is.
"""
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

MAX_WORKERS = 16  # at least the pool's `capacity` in hive.toml


class Cancelled(Exception):
    """Raised by handle() when the host cancelled the task."""


def handle(payload, cancel):
    """Run one task and return its output (any JSON value).

    `cancel` is a threading.Event set when Hive cancels the task; long-running
    work should check it (or wait on it) and raise Cancelled. Any exception
    becomes a failed result carrying the exception text.
    """
    if isinstance(payload, dict) and "sleep" in payload:
        if cancel.wait(float(payload["sleep"])):  # True means: cancelled
            raise Cancelled()
    if isinstance(payload, dict) and isinstance(payload.get("fail"), str):
        raise RuntimeError(payload["fail"])
    return {"echo": payload}


# --- protocol plumbing: usually no need to change anything below ---------

_write_lock = threading.Lock()
_tasks_lock = threading.Lock()
_tasks = {}  # task id -> cancel Event, for tasks not yet answered


def send(msg):
    """Write one whole JSON line to stdout; safe to call from any thread."""
    data = (json.dumps(msg) + "\n").encode("utf-8")
    with _write_lock:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except (BrokenPipeError, ValueError):
            pass  # host is gone; nothing useful left to do


def note(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def finish(task_id, result):
    """Send the result of a task, once: later results for it are dropped."""
    with _tasks_lock:
        if _tasks.pop(task_id, None) is None:
            return
    send(dict({"type": "result", "id": task_id}, **result))


def run_task(task_id, payload, cancel):
    try:
        if cancel.is_set():
            raise Cancelled()
        output = handle(payload, cancel)
        finish(task_id, {"ok": True, "output": output})
    except Cancelled:
        finish(task_id, {"ok": False, "error": "cancelled"})
    except Exception as e:  # a bug in handle() fails the task, not the agent
        finish(task_id, {"ok": False, "error": str(e) or type(e).__name__})


def main():
    sys.stdin.reconfigure(encoding="utf-8", errors="replace")
    pool = ThreadPoolExecutor(max_workers=MAX_WORKERS)
    stop = threading.Event()
    started = False
    for line in sys.stdin:  # ends on EOF
        try:
            msg = json.loads(line)
            kind = msg.get("type")
        except (ValueError, AttributeError):
            note("echo_agent: ignoring malformed line: %r" % line[:200])
            continue
        if kind == "hello" and not started:
            started = True
            hb = msg.get("heartbeat_ms")
            period = hb / 1000.0 if isinstance(hb, (int, float)) and hb > 0 else 1.0

            def beat():
                while not stop.wait(period):
                    send({"type": "heartbeat"})

            threading.Thread(target=beat, daemon=True).start()
            send({"type": "ready"})
        elif kind == "task" and isinstance(msg.get("id"), int):
            cancel = threading.Event()
            with _tasks_lock:
                _tasks[msg["id"]] = cancel
            pool.submit(run_task, msg["id"], msg.get("payload"), cancel)
        elif kind == "cancel" and isinstance(msg.get("id"), int):
            with _tasks_lock:
                cancel = _tasks.get(msg.get("id"))
            if cancel is not None:  # unknown or finished ids are ignored
                cancel.set()
                finish(msg["id"], {"ok": False, "error": "cancelled"})
        elif kind == "shutdown":
            break
        # any other type: ignored, for forward compatibility
    pool.shutdown(wait=True)  # finish in-flight tasks and send their results
    stop.set()
    sys.exit(0)


if __name__ == "__main__":
    main()
