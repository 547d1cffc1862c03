"""Content-addressed blobs: ``blobs/sha256-<hex>``, written so a failure leaves nothing.

Every write goes to a ``.partial-<random>`` file in ``blobs/`` (same filesystem,
so the final rename is atomic), is hashed as it is written, fsynced, checked
against the digest it claims, and only then renamed into place. Readers thus
see either no blob or a complete, verified one; a cancelled or failed upload
removes its partial file on the way out, and ``Store.prune`` removes any a
crash left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO

from pollama.errors import DigestMismatch
from pollama.store.manifest import digest_of, parse_digest

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
BLOB_FILE = re.compile(r"sha256-[0-9a-f]{64}")
_COPY_CHUNK = 1 << 20


class BlobStore:
    """The ``blobs/`` half of a model store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        # Partial files of writes running in this process, so pruning spares them.
        self._writing: set[Path] = set()

    def blob_path(self, digest: str) -> Path:
        """Where a blob lives; InvalidDigest for anything but sha256 + 64 hex digits,
        which is what keeps this path inside ``blobs/``."""
        return self.blobs_dir / ("sha256-" + parse_digest(digest).removeprefix("sha256:"))

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int | None:
        """The blob's size in bytes, or None when it is absent."""
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    async def write_blob(self, digest: str, chunks: AsyncIterable[bytes]) -> bool:
        """Store the bytes ``chunks`` yields under ``digest``; True if the blob is new.

        An existing blob is not overwritten and ``chunks`` is not read (Ollama answers
        200 without reading the body). Bytes hashing to anything else raise
        DigestMismatch; any failure, cancellation included, leaves no file behind.
        """
        expected = parse_digest(digest)
        final = self.blob_path(expected)
        if final.is_file():
            return False
        partial, f = self._open_partial()
        handed_off = False
        try:
            hasher = hashlib.sha256()
            async for chunk in chunks:
                hasher.update(chunk)
                f.write(chunk)
            actual = "sha256:" + hasher.hexdigest()
            if actual != expected:
                raise DigestMismatch(expected, actual)
            # fsync of a large upload can take seconds: off the event loop. From here the
            # worker owns the file; if we are cancelled while it runs, it still finishes
            # (the bytes are verified, so the blob it places is a correct one).
            handed_off = True
            await asyncio.to_thread(self._commit, f, partial, final)
        finally:
            if not handed_off:
                self._discard(f, partial)
        return True

    def write_blob_bytes(self, data: bytes) -> str:
        """Store bytes held in memory (small layers, config blobs); returns their digest."""
        digest = digest_of(data)
        final = self.blob_path(digest)
        if not final.is_file():
            partial, f = self._open_partial()
            try:
                f.write(data)
            except BaseException:
                self._discard(f, partial)
                raise
            self._commit(f, partial, final)
        return digest

    def add_file(self, path: Path) -> str:
        """Copy a local file into the store, hashing as it streams; returns its digest."""
        partial, f = self._open_partial()
        try:
            hasher = hashlib.sha256()
            with open(path, "rb") as source:
                while chunk := source.read(_COPY_CHUNK):
                    hasher.update(chunk)
                    f.write(chunk)
        except BaseException:
            self._discard(f, partial)
            raise
        digest = "sha256:" + hasher.hexdigest()
        final = self.blob_path(digest)
        if final.is_file():
            self._discard(f, partial)
        else:
            self._commit(f, partial, final)
        return digest

    def remove_stale_partials(self) -> list[str]:
        """Delete partial files no write in this process owns; returns their names."""
        removed: list[str] = []
        try:
            entries = list(self.blobs_dir.iterdir())
        except FileNotFoundError:
            return removed
        for path in entries:
            if path.name.startswith(PARTIAL_PREFIX) and path not in self._writing:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    # -- the write protocol ------------------------------------------------------------------

    def _open_partial(self) -> tuple[Path, BinaryIO]:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        partial = self.blobs_dir / f"{PARTIAL_PREFIX}{secrets.token_hex(8)}"
        f = open(partial, "xb")  # closed by _commit or _discard
        self._writing.add(partial)
        return partial, f

    def _commit(self, f: BinaryIO, partial: Path, final: Path) -> None:
        """Make a written partial file durable and move it into place, or remove it."""
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(partial, final)
            fsync_dir(final.parent)
        except BaseException:
            f.close()
            partial.unlink(missing_ok=True)
            raise
        finally:
            self._writing.discard(partial)

    def _discard(self, f: BinaryIO, partial: Path) -> None:
        f.close()
        partial.unlink(missing_ok=True)
        self._writing.discard(partial)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".tmp-{secrets.token_hex(8)}"
    try:
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry lives in the directory, not the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)
