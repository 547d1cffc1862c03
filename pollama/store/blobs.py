"""Content-addressed blobs: ``blobs/sha256-<hex>``, written so a failure leaves nothing.

Every write goes to a ``.partial-<random>`` file in ``blobs/`` (same filesystem,
so the final rename is atomic), is hashed as it is written, fsynced, checked
against the digest it claims, and only then renamed into place. Readers thus
see either no blob or a complete, verified one; a cancelled or failed upload
removes its partial file on the way out, and ``Store.prune`` removes any a
crash left behind. A file another process writes (the quantizer child) gets the same
treatment: ``file_to_fill`` hands it out, ``adopt`` hashes it and renames it into place.

A blob pulled from a registry is written instead to ``.resumable-sha256-<hex>``
(see ``BlobStore.open_download``): a name derived from the digest, so a pull that
was cut off continues the next time from where it stopped, and one that is not a
blob's name (``sha256-<hex>``), so nothing resolves, lists or prunes it as a blob.
It is kept on a connection failure or cancellation, removed when its bytes prove
wrong, and removed by ``prune`` (at ``pollama serve`` start-up and after a delete)
once the blob is complete or it has not been written to for ``RESUMABLE_MAX_AGE``.
The name is not Ollama's ``sha256-<hex>-partial`` (a sparse file with ``-partial-N``
part files beside it), so a store shared with Ollama never mixes the two.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from hashlib import _Hash

from pollama.errors import DigestMismatch, StorageFull
from pollama.store.lock import to_thread_to_the_end
from pollama.store.manifest import digest_of, parse_digest

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
RESUMABLE_PREFIX = ".resumable-"
RESUMABLE_MAX_AGE = 7 * 24 * 3600.0
"""Seconds an interrupted pull's bytes are kept for a retry after their last write."""
TEMP_PREFIX = ".tmp-"
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def full_disk_is_storage_full(what: str) -> Iterator[None]:
    """A write that fails for lack of space is a StorageFull (507) naming what was being
    written, not an anonymous OSError (500)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise StorageFull(
                f"the model store is out of space writing {what}: {exc.strerror}"
            ) from exc
        raise


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

    def touch_blob(self, digest: str) -> bool:
        """Whether the blob exists; one that does gets the time now as its modification
        time. A client uploads a blob (or learns it is here already) and creates a model
        from it in a later request: prune's grace (``keep_newer_than``) counts from then."""
        path = self.blob_path(digest)
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        except OSError:  # not ours to touch (a demo blob linked to a read-only wheel)
            return path.is_file()
        return True

    def blob_size(self, digest: str) -> int | None:
        """The blob's size in bytes, or None when it is absent."""
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    async def write_blob(self, digest: str, chunks: AsyncIterable[bytes]) -> bool:
        """Store the bytes ``chunks`` yields under ``digest``; True if the blob is new.

        An existing blob is not overwritten and ``chunks`` is not read (Ollama answers
        200 without reading the body); it is touched (``touch_blob``). Bytes hashing to
        anything else raise DigestMismatch; any failure, cancellation included, leaves
        no file behind.
        """
        expected = parse_digest(digest)
        final = self.blob_path(expected)
        if self.touch_blob(expected):
            return False
        partial, f = self._open_partial()
        handed_off = False
        try:
            hasher = hashlib.sha256()
            async for chunk in chunks:
                hasher.update(chunk)
                with full_disk_is_storage_full(f"blob {expected}"):
                    f.write(chunk)
            actual = "sha256:" + hasher.hexdigest()
            if actual != expected:
                raise DigestMismatch(expected, actual)
            # fsync of a large upload can take seconds: off the event loop. From here the
            # worker owns the file; if we are cancelled while it runs, it still finishes
            # (the bytes are verified, so the blob it places is a correct one), and we
            # wait for it: the store's lock is not released while it renames.
            handed_off = True
            with full_disk_is_storage_full(f"blob {expected}"):
                await to_thread_to_the_end(self._commit, f, partial, final)
        finally:
            if not handed_off:
                self._discard(f, partial)
        return True

    def write_blob_bytes(self, data: bytes) -> str:
        """Store bytes held in memory (small layers, config blobs); returns their digest."""
        digest = digest_of(data)
        final = self.blob_path(digest)
        if not final.is_file():
            with full_disk_is_storage_full(f"blob {digest}"):
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
            with open(path, "rb") as source, full_disk_is_storage_full(f"a copy of {path}"):
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
            with full_disk_is_storage_full(f"a copy of {path}"):
                self._commit(f, partial, final)
        return digest

    def link_file(self, path: Path, digest: str) -> str:
        """Place a file whose digest is already known (a wheel's RECORD vouches for it) as
        a hard link, neither read nor copied; a copy hashed as it streams (``add_file``)
        where the store is on another file system. Returns the digest."""
        final = self.blob_path(digest)
        if final.is_file():
            return digest
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        partial = self.blobs_dir / f"{PARTIAL_PREFIX}{secrets.token_hex(8)}"
        try:
            os.link(path, partial)
        except OSError as exc:
            log.debug("cannot link %s into the store (%s); copying it", path, exc)
            return self.add_file(path)
        os.replace(partial, final)
        fsync_dir(final.parent)
        return digest

    @contextlib.contextmanager
    def file_to_fill(self) -> Iterator[Path]:
        """An empty partial file in ``blobs/`` for another writer (a child process) to fill:
        spared by prune while in use, removed on the way out (``adopt`` it to keep it)."""
        partial, f = self._open_partial()
        f.close()
        try:
            yield partial
        finally:
            partial.unlink(missing_ok=True)
            self._writing.discard(partial)

    def adopt(self, partial: Path) -> str:
        """A filled partial file, hashed, made durable and renamed into place; its digest.
        The same bytes stored already: the partial file is dropped and the blob kept."""
        with open(partial, "r+b") as f:
            hasher, _ = _hash_file(f)
            digest = "sha256:" + hasher.hexdigest()
            final = self.blob_path(digest)
            if final.is_file():
                partial.unlink(missing_ok=True)
                return digest
            with full_disk_is_storage_full(f"blob {digest}"):
                os.fsync(f.fileno())
        os.replace(partial, final)
        fsync_dir(final.parent)
        return digest

    def open_download(self, digest: str) -> BlobDownload | None:
        """A file to download ``digest`` into, holding whatever an interrupted download of
        it left (``offset`` bytes); None when the blob is complete already.

        The resumable file is locked (``flock``) while in use. When another download
        holds it, in this process or another, this one gets a private partial file
        instead and starts from zero: two writers never share a file.
        """
        expected = parse_digest(digest)
        final = self.blob_path(expected)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        path = self.blobs_dir / f"{RESUMABLE_PREFIX}{final.name}"
        f = _open_locked(path)
        if f is None:
            partial, private = self._open_partial()
            return BlobDownload(self, expected, partial, private, resumable=False)
        if final.is_file():  # completed by another download since the caller looked
            path.unlink(missing_ok=True)  # before the lock goes: it is this file, not a new one
            f.close()
            return None
        self._writing.add(path)
        try:
            hasher, size = _hash_file(f)
        except BaseException:
            self._writing.discard(path)
            f.close()
            raise
        return BlobDownload(self, expected, path, f, resumable=True, hasher=hasher, size=size)

    def remove_stale_partials(self) -> list[str]:
        """Delete partial files no write in this process owns, and resumable downloads
        that are complete or were last written over ``RESUMABLE_MAX_AGE`` ago; returns
        their names."""
        removed: list[str] = []
        try:
            entries = list(self.blobs_dir.iterdir())
        except FileNotFoundError:
            return removed
        horizon = time.time() - RESUMABLE_MAX_AGE
        for path in entries:
            if path in self._writing:
                continue
            if path.name.startswith(RESUMABLE_PREFIX):
                blob = self.blobs_dir / path.name.removeprefix(RESUMABLE_PREFIX)
                try:
                    if not blob.is_file() and path.stat().st_mtime > horizon:
                        continue
                except FileNotFoundError:
                    continue
            elif not path.name.startswith(PARTIAL_PREFIX):
                continue
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


class BlobDownload:
    """One blob's bytes as they arrive from a registry: appended, hashed as they are
    written (after the bytes an earlier attempt left), verified and renamed into place
    by ``commit``. Use as a context manager: leaving it without a commit keeps a
    resumable file for the next attempt and removes a private or empty one."""

    def __init__(
        self,
        store: BlobStore,
        digest: str,
        path: Path,
        f: BinaryIO,
        *,
        resumable: bool,
        hasher: _Hash | None = None,
        size: int = 0,
    ) -> None:
        self.digest, self.path, self.resumable = digest, path, resumable
        self._store, self._f = store, f
        self._hasher = hasher or hashlib.sha256()
        self._size = size
        self._open = True

    @property
    def offset(self) -> int:
        """Bytes held so far: where the download continues."""
        return self._size

    def matches(self) -> bool:
        """Whether the bytes held so far are the whole blob."""
        return "sha256:" + self._hasher.copy().hexdigest() == self.digest

    def restart(self) -> None:
        """Drop the bytes held: the download starts again from zero."""
        self._f.seek(0)
        self._f.truncate()
        self._hasher, self._size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        with full_disk_is_storage_full(f"blob {self.digest}"):
            self._f.write(chunk)
        self._hasher.update(chunk)
        self._size += len(chunk)

    async def commit(self) -> None:
        """Verify the whole file's digest and move it into place; DigestMismatch (and
        the file removed: its bytes are wrong, resuming them cannot help) otherwise."""
        actual = "sha256:" + self._hasher.hexdigest()
        if actual != self.digest:
            self.discard()
            raise DigestMismatch(self.digest, actual)
        # The worker owns the file from here; cancelled meanwhile, it still finishes.
        self._open = False
        with full_disk_is_storage_full(f"blob {self.digest}"):
            await to_thread_to_the_end(self._place)

    def discard(self) -> None:
        """Remove the file, resumable or not."""
        if self._open:
            self._open = False
            self._release(remove=True)

    def close(self) -> None:
        """Keep a resumable file's bytes (durably) for the next attempt; remove a private
        or empty one."""
        if not self._open:
            return
        if not self.resumable or self._size == 0:
            self.discard()  # nothing worth resuming
            return
        self._open = False
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            log.info("kept a partial download: digest=%s bytes=%d", self.digest, self._size)
        except OSError as exc:
            log.warning("keeping a partial download failed: path=%s error=%s", self.path, exc)
        finally:
            self._release(remove=False)

    def _place(self) -> None:
        """Make the file durable and rename it into place, all under its lock: whoever
        takes the lock next finds the blob complete, never this file half-moved."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            os.replace(self.path, self._final)
            fsync_dir(self._final.parent)
        except BaseException:
            self._release(remove=True)
            raise
        self._release(remove=False)

    def _release(self, *, remove: bool) -> None:
        """Close the file (which drops its lock), removing it first if ``remove``: a file
        removed after the lock is gone might be another download's new one."""
        try:
            if remove:
                self.path.unlink(missing_ok=True)
        finally:
            try:
                self._f.close()
            except OSError:
                # The buffer a full disk refused: closing writes it again and fails
                # again (the descriptor still closes). The failure was reported already;
                # raised here, it would replace that report (StorageFull) with a 500.
                pass
            self._store._writing.discard(self.path)

    def __enter__(self) -> BlobDownload:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def _final(self) -> Path:
        return self._store.blob_path(self.digest)


def _open_locked(path: Path) -> BinaryIO | None:
    """``path`` opened for reading and writing (made if absent) and locked; None when
    another open file holds the lock. Retries if the file was renamed or removed between
    the open and the lock, so the lock held is always on the file the name points to."""
    for _ in range(10):
        f = open(path, "a+b")  # noqa: SIM115 - returned open, or closed here
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()
    return None


def _hash_file(f: BinaryIO) -> tuple[_Hash, int]:
    """The sha256 of the bytes in ``f`` and their count."""
    hasher, size = hashlib.sha256(), 0
    f.seek(0)
    while chunk := f.read(_COPY_CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return hasher, size


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    try:
        with full_disk_is_storage_full(str(path.name)), open(temp, "xb") as f:
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
