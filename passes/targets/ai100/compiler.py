"""The Cloud AI 100 compiler as a process: streamed output, a kept tail, a timeout that stops its process group."""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Optional

from passes.targets.ai100.plan import PROGRAM, QPC_DIR
from pipeline.pass_api import StageFailure

TAIL_LINES = 50
STDERR_TAIL_LINES = 20


def run_compiler(argv: list[str], cwd: Path, name: str, timeout_s: Optional[float]) -> dict[str, Any]:
    """Run the compiler in cwd (the caller's environment), stream its output line by line, keep
    its tail; a timeout kills its whole process group. StageFailure unless qpc/programqpc.bin."""
    import collections
    import subprocess
    import sys
    import threading
    import time

    command = shlex.join(argv)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    err_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    lock = threading.Lock()

    def pump(stream: Any, is_err: bool) -> None:
        for raw in stream:
            line = raw.rstrip("\r\n")
            with lock:
                tail.append(line)
                if is_err:
                    err_tail.append(line)
                print(f"  {name}: {line}", file=sys.stderr if is_err else sys.stdout, flush=True)
        stream.close()

    start = time.monotonic()
    print(f"  {name}: {command}", flush=True)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    except OSError as e:
        raise StageFailure(f"compile: cannot start {name}: {type(e).__name__}: {e}: {command}",
                           {"command": command}) from e
    pumps = [threading.Thread(target=pump, args=(proc.stdout, False), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, True), daemon=True)]
    for t in pumps:
        t.start()

    def finish() -> dict[str, Any]:
        for t in pumps:
            t.join(timeout=5)
        with lock:
            return {"command": command, "seconds": round(time.monotonic() - start, 3),
                    "output_tail": "\n".join(tail)[-8000:], "stderr_tail": "\n".join(err_tail)}

    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        info = finish()
        raise StageFailure(f"compile: {name} timed out after {timeout_s:g} s: {command}",
                           {**info, "timeout_s": timeout_s}) from None
    except BaseException:  # interrupted: leave no compiler behind
        _kill_group(proc)
        raise
    info = finish()
    if code != 0:
        raise StageFailure(f"compile: {name} failed with exit code {code}: {command}\n{info['stderr_tail']}",
                           {**info, "exit_code": code})
    if not (cwd / QPC_DIR / PROGRAM).is_file():
        raise StageFailure(f"compile: {name} exited 0 but wrote no {QPC_DIR}/{PROGRAM}: {command}",
                           {**info, "exit_code": code})
    return {k: v for k, v in info.items() if k != "stderr_tail"}


def _kill_group(proc: Any, grace_s: float = 5.0) -> None:
    """SIGTERM the compiler's process group, SIGKILL what is left after grace_s; reap the leader."""
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()
