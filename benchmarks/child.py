"""Run one benchmark case in a fresh process and read its peak memory, so cases do not share a heap."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_child(argv: list[str], python: str = sys.executable, stderr=None) -> tuple[dict, int]:
    """Run ``python argv...``; return the JSON object it prints last and its peak resident bytes."""
    proc = subprocess.Popen([python, *argv], stdout=subprocess.PIPE, stderr=stderr, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)   # this child's own peak, not the parent's
    if status:
        sys.exit(f"benchmark child failed (status {status}): {' '.join(argv)}")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss * 1024


def checkpoint_bytes(directory: str) -> int:
    """Size of the checkpoint data and index files in ``directory``."""
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory) if n.startswith("model."))
