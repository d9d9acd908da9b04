"""The node's output folder: atomic writes, reading back, and setting hand edits aside.

The files carry SIP secrets (trunk passwords, phones' digest hashes), so they are
readable by their owner (the service) and by the node's `file_group` (Asterisk) only.
Without a `file_group` they get the group of the output folder itself: the operator made
that folder readable by Asterisk, and a file of the service's own group would not be.
"""

from __future__ import annotations

import grp
import os
import stat
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
    The temp file is created with its final mode, so no reader ever sees it wider.
    `group` None: the group of `folder`, for the file and any folder made for it."""
    path = folder / relative
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    if group is None:
        group = folder.stat().st_gid
    _make_folders(folder, path.parent, group)
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


def _make_folders(top: Path, folder: Path, group: int) -> None:
    if folder == top or folder.is_dir():
        return
    _make_folders(top, folder.parent, group)
    folder.mkdir(mode=0o750, exist_ok=True)
    os.chown(folder, -1, group)


def unreadable(folder: Path, relatives: list[str]) -> list[str]:
    """Which of these files (or the folders on the way to them) Asterisk cannot read,
    each named with its mode and group for a person to fix. Asterisk reads the output
    folder, so the folder's group is taken as the one Asterisk reads through: a file
    not readable by others must be of that group (a `file_group` that names another
    group is the mistake this finds)."""
    if not folder.is_dir():
        return []  # nothing written yet: nothing to read
    wanted = folder.stat().st_gid
    found: dict[Path, str] = {}
    for relative in relatives:
        path = folder / relative
        while path != folder:
            try:
                info = path.stat()
            except FileNotFoundError:
                break
            need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(info.st_mode) else 0)
            if info.st_gid != wanted and info.st_mode & need != need and path not in found:
                found[path] = (
                    f"Asterisk cannot read {path}: mode {stat.S_IMODE(info.st_mode):04o},"
                    f" group {_group_name(info.st_gid)}, not {_group_name(wanted)} (the"
                    " output folder's; set the node's file_group to it, or leave it out)"
                )
            path = path.parent
    return sorted(found.values())


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


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
