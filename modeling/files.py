"""Output files that never lose data: refuse to replace without --overwrite, write to a temporary
file and rename it into place only when complete (local paths and ``gs://`` alike, via tf.io.gfile)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

from modeling.cli import UserError
from modeling.mtf_compat import tf


def check_new_output(path: str, overwrite: bool) -> None:
    """Fail early, before any work, if ``path`` exists and may not be replaced."""
    if tf.io.gfile.exists(path) and not overwrite:
        raise UserError(f"{path} already exists: pass --overwrite to replace it, or choose another --output")
    parent = os.path.dirname(path)
    if parent and not tf.io.gfile.isdir(parent):
        raise UserError(f"the directory of {path} does not exist: create it first")


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[IO[str]]:
    """A text file handle whose content appears at ``path`` only if the block completes."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tf.io.gfile.GFile(temporary, "w") as f:
            yield f
        tf.io.gfile.rename(temporary, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)


def write_json(path: str, data: Any) -> None:
    """``data`` as indented UTF-8 JSON, atomically."""
    with atomic_output(path) as f:
        f.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def read_items(path: str, flag: str) -> list[tuple[int, str, dict]]:
    """(line number, context, other keys) for every non-empty line of ``path`` ('-' = stdin): a line is
    plain text, or a JSON object whose ``context`` (default "") is the text."""
    import sys  # noqa: PLC0415

    if path == "-":
        lines = sys.stdin.read().splitlines()
    elif not tf.io.gfile.exists(path):
        raise UserError(f"{flag} {path} not found")
    else:
        with tf.io.gfile.GFile(path, "r") as f:
            lines = f.read().splitlines()
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            items.append((number, line, {}))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: invalid JSON ({error.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("context", ""), str):
            raise UserError(f"{path}:{number}: a JSON line must be an object whose 'context' is a string")
        items.append((number, obj.pop("context", ""), obj))
    if not items:
        raise UserError(f"{flag} {path} has no non-empty lines")
    return items
