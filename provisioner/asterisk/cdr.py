"""A node's CDR spool as Asterisk writes it: the file cdr_custom appends one CSV line to
for each call record (asterisk-docker/conf/cdr_custom.conf). Read from an offset, whole
lines only (a line being written is left for the next read)."""

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


def read(path: Path, inode: int, offset: int, limit: int = CHUNK_BYTES) -> Chunk | None:
    """The whole lines after `offset` of the file (None: there is no file yet). A file
    that is not the one the offset is of (rotated: another inode) or shorter than the
    offset (truncated) is read from its start: records read twice are stored once."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        stat = os.fstat(handle.fileno())
        if stat.st_ino != inode or stat.st_size < offset:
            offset = 0
        handle.seek(offset)
        data = handle.read(limit)
    whole = data.rfind(b"\n") + 1
    if whole == 0 and len(data) == limit:
        # One line longer than a whole chunk is nobody's record: skip past it.
        return Chunk(stat.st_ino, offset, offset + len(data), [])
    text = data[:whole].decode("utf-8", errors="replace")
    lines = [line for line in text.split("\n")[:-1] if line.strip()]
    return Chunk(stat.st_ino, offset, offset + whole, lines)
