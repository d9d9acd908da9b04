"""The node's output folder: atomic writes, reading back, and setting hand edits aside.

The files carry SIP secrets (trunk passwords, phones' digest hashes), so they are
readable by their owner (the service) and by the node's `file_group` (Asterisk) only.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def read(folder: Path, relative: str) -> str | None:
    try:
        return (folder / relative).read_text()
    except FileNotFoundError:
        return None


FILE_MODE = 0o640
GOOD = ".good"  # the last good files of each PBX, for rollbacks; outside any #include


def write_atomic(
    folder: Path, relative: str, text: str, *, group: int | None = None, mode: int = FILE_MODE
) -> None:
    """Temp file, fsync, rename, fsync the folder: Asterisk sees the old or the new file.
    The temp file is created with its final mode, so no reader ever sees it wider."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    temp = path.with_name(f".{path.name}.tmp")
    handle = os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w")
    try:
        with handle:
            os.fchmod(handle.fileno(), mode)  # an earlier temp file may have had another mode
            if group is not None:
                os.fchown(handle.fileno(), -1, group)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk keeps the old file and no debris
        raise
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


def keep_good(
    folder: Path, now_good: dict[str, str], before: dict[str, str], *, group: int | None = None
) -> None:
    """Keep the real text of a PBX's files that were just verified live (the database
    keeps them redacted, and a rollback must write the secrets too)."""
    for relative in set(before) - set(now_good):
        (folder / GOOD / relative).unlink(missing_ok=True)
    for relative, text in now_good.items():
        if read_good(folder, relative) != text:
            write_atomic(folder / GOOD, relative, text, group=group, mode=0o600)


def read_good(folder: Path, relative: str) -> str | None:
    return read(folder / GOOD, relative)
