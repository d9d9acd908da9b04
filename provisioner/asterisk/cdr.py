"""A node's CDR spool as Asterisk writes it: the file cdr_custom appends one CSV line to
for each call record (asterisk-docker/conf/cdr_custom.conf). Read from an offset, whole
lines only (a line being written is left for the next read).

Rotation: cdr_custom opens the file for every record, so a spool renamed away
(`provisioner.csv` -> `provisioner.csv.1`, as logrotate does without copytruncate) is
followed by a new one at once. The offset belongs to the old file (its inode): what is
left of it is read first, found by its inode among the files named like the spool, and
then the new file from its start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# One read takes at most this much: a batch a transaction stores in well under a second.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Chunk:
    inode: int
    start: int  # where it was read from
    end: int  # after its last whole line: the next read's start
    lines: list[str]


def _whole_lines(inode: int, offset: int, data: bytes, limit: int) -> Chunk:
    whole = data.rfind(b"\n") + 1
    if whole == 0 and len(data) == limit:
        # One line longer than a whole chunk is nobody's record: skip past it.
        return Chunk(inode, offset, offset + len(data), [])
    text = data[:whole].decode("utf-8", errors="replace")
    lines = [line for line in text.split("\n")[:-1] if line.strip()]
    return Chunk(inode, offset, offset + whole, lines)


def _renamed(path: Path, inode: int) -> Path | None:
    """The spool the offset is of, renamed by a rotation (None: not rotated, or gone)."""
    for candidate in sorted(path.parent.glob(path.name + "?*")):
        try:
            if candidate.stat().st_ino == inode:
                return candidate
        except OSError:
            continue
    return None


def read(path: Path, inode: int, offset: int, limit: int = CHUNK_BYTES) -> Chunk | None:
    """The whole lines after `offset` of the spool (None: there is no file yet). When
    the spool is another file than the one the offset is of (its inode), the rest of
    that one comes first if it is still there under a rotated name; then the new one
    from its start. A spool shorter than the offset (truncated) is read from its start.
    A record read twice is stored once, so starting over loses nothing."""
    if inode:
        try:
            rotated = path.stat().st_ino != inode
        except FileNotFoundError:
            rotated = True
        old = _renamed(path, inode) if rotated else None
        if old is not None:
            with old.open("rb") as handle:
                handle.seek(offset)
                rest = _whole_lines(inode, offset, handle.read(limit), limit)
            if rest.end > offset:
                return rest
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        stat = os.fstat(handle.fileno())
        if stat.st_ino != inode or stat.st_size < offset:
            offset = 0
        handle.seek(offset)
        return _whole_lines(stat.st_ino, offset, handle.read(limit), limit)
