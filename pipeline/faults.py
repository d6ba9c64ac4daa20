"""Test-only fault hook: ``PIPELINE_FAULT=<stage>:<point>`` kills the process at that point.

Points, in the order a materialized stage passes them: ``before_run``, ``after_run`` (output
written in tmp/), ``after_blobs`` (files linked into cas/), ``after_tree`` (tree in place,
before the action record). The kill is SIGKILL, as a crash or an OOM kill would be: no
cleanup handler runs.
"""
from __future__ import annotations

import os
import signal

POINTS = ("before_run", "after_run", "after_blobs", "after_tree")


def point(stage: str, name: str) -> None:
    wanted = os.environ.get("PIPELINE_FAULT")
    if wanted and wanted == f"{stage}:{name}":
        os.kill(os.getpid(), signal.SIGKILL)
