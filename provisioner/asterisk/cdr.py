"""A node's CDR spool as Asterisk writes it: the file cdr_custom appends one CSV line to
for each call record (asterisk-docker/conf/cdr_custom.conf). Read from an offset, whole
lines only (a line being written is left for the next read).

Rotation: cdr_custom opens the file for every record, so a spool renamed away
(`provisioner.csv` -> `provisioner.csv.1`, as logrotate does without copytruncate) is
followed by a new one at once. The offset belongs to the old file (its inode): what is
left of it is read first, found by its inode among the files named like the spool, and
then the new file from its start.

A file is known by its inode and a fingerprint of its first line (`Spool`): a spool
removed and made anew at once may get the inode the old one had, and a file of the same
length would then look fully read."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

# One read takes at most this much: a batch a transaction stores in well under a second.
CHUNK_BYTES = 1 << 20
# A first line longer than this is fingerprinted by its start.
HEAD_BYTES = 4096


class Spool(NamedTuple):
    """Which file an offset is of: its inode, and its first line's fingerprint ('': no
    whole line yet, or a position stored before fingerprints; the inode alone)."""

    inode: int
    head: str


@dataclass(frozen=True)
class Chunk:
    spool: Spool
    start: int  # where it was read from
    end: int  # after its last whole line: the next read's start
    lines: list[str]


def _head(handle: BinaryIO) -> str:
    handle.seek(0)
    first = handle.readline(HEAD_BYTES)
    return hashlib.sha256(first).hexdigest()[:32] if first.endswith(b"\n") else ""


def _identity(handle: BinaryIO) -> Spool:
    """The open file's inode and first-line fingerprint, read once per open file."""
    return Spool(os.fstat(handle.fileno()).st_ino, _head(handle))


def _same(spool: Spool, this: Spool) -> bool:
    return this.inode == spool.inode and (not spool.head or this.head == spool.head)


def _whole_lines(spool: Spool, offset: int, data: bytes, limit: int) -> Chunk:
    whole = data.rfind(b"\n") + 1
    if whole == 0 and len(data) == limit:
        # One line longer than a whole chunk is nobody's record: skip past it.
        return Chunk(spool, offset, offset + len(data), [])
    text = data[:whole].decode("utf-8", errors="replace")
    lines = [line for line in text.split("\n")[:-1] if line.strip()]
    return Chunk(spool, offset, offset + whole, lines)


def _renamed(path: Path, spool: Spool) -> Path | None:
    """The spool the offset is of, renamed by a rotation (None: not rotated, or gone)."""
    for candidate in sorted(path.parent.glob(path.name + "?*")):
        try:
            with candidate.open("rb") as handle:
                if _same(spool, _identity(handle)):
                    return candidate
        except OSError:
            continue
    return None


def read(path: Path, spool: Spool, offset: int, limit: int = CHUNK_BYTES) -> Chunk | None:
    """The whole lines after `offset` of the spool (None: there is no file yet). When
    the spool is another file than the one the offset is of, the rest of that one comes
    first if it is still there under a rotated name; then the new one from its start.
    A spool shorter than the offset (truncated) is read from its start. A record read
    twice is stored once, so starting over loses nothing."""
    try:
        current: BinaryIO | None = path.open("rb")
    except FileNotFoundError:
        current = None
    this = _identity(current) if current is not None else None
    if spool.inode and (this is None or not _same(spool, this)):
        old = _renamed(path, spool)
        if old is not None:
            with old.open("rb") as handle:
                handle.seek(offset)
                rest = _whole_lines(spool, offset, handle.read(limit), limit)
            if rest.end > offset:
                if current is not None:
                    current.close()
                return rest
    if current is None or this is None:
        return None
    with current:
        if not _same(spool, this) or os.fstat(current.fileno()).st_size < offset:
            offset = 0
        current.seek(offset)
        return _whole_lines(this, offset, current.read(limit), limit)
