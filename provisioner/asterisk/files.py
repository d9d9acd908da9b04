"""The node's output folder: atomic writes, reading back, and setting hand edits aside."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def read(folder: Path, relative: str) -> str | None:
    try:
        return (folder / relative).read_text()
    except FileNotFoundError:
        return None


def write_atomic(folder: Path, relative: str, text: str) -> None:
    """Temp file, fsync, rename, fsync the folder: Asterisk sees the old or the new file."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temp.chmod(0o644)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove(folder: Path, relative: str) -> None:
    (folder / relative).unlink(missing_ok=True)


def set_aside(folder: Path, relative: str, now: datetime) -> str:
    """Move a hand-edited file out of the wildcard include, keeping it for the engineer."""
    path = folder / relative
    kept = path.with_name(f"{path.name}.hand-edited-{now:%Y%m%dT%H%M%S}")
    os.replace(path, kept)
    return str(kept.relative_to(folder))
