"""Parse a GGUF header (metadata and tensor infos) without touching tensor data.

The file is memory-mapped, so only the pages the header occupies are ever read, however
large the file. Every count and length in the header is checked against the bytes left in
the file before anything is allocated or looped over, so a corrupt or hostile header costs
at most a pass over the bytes that really are there, and fails as one InvalidModelFile.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from pollama.errors import InvalidModelFile
from pollama.ggufmeta.constants import GGUFValueType
from pollama.ggufmeta.model import GGUFModel
from pollama.ggufmeta.records import (
    GGML_BLOCK_SIZES,
    GGML_MAX_DIMS,
    TensorInfo,
    TruncatedArray,
    ggml_type_name,
)
from pollama.units import format_bytes

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and is long obsolete
DEFAULT_ALIGNMENT = 32

# Smallest possible encodings, used to bound counts before looping over them.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_MIN_ARRAY_BYTES = 4 + 8  # item type, item count
# Real files nest arrays at most one level; the cap keeps recursion far from Python's limit.
_MAX_ARRAY_DEPTH = 8

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<B"),  # any non-zero byte is true
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}


def _value_type_name(vtype: int) -> str:
    try:
        return GGUFValueType(vtype).name.lower()
    except ValueError:
        return f"type {vtype}"


class _Cursor:
    """A read position in the mapped file; every read checks the bytes remaining first."""

    __slots__ = ("buf", "pos", "size", "path", "max_array_len")

    def __init__(self, buf: mmap.mmap, path: str, max_array_len: int) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path
        self.max_array_len = max_array_len

    def fail(self, problem: str) -> NoReturn:
        raise InvalidModelFile(self.path, problem)

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.fail(
                f"truncated: {what} at byte {self.pos} needs {n} bytes "
                f"but the file ends at byte {self.size}"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.size - self.pos:
            self.fail(
                f"{what}: string length {n} at byte {self.pos - 8} runs past the end of "
                f"the file ({self.size} bytes)"
            )
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        # Tokens may hold partial UTF-8 sequences; a readable stand-in beats failing the model.
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str) -> Any:
        scalar = _SCALARS.get(vtype)
        if scalar is not None:
            self.need(scalar.size, what)
            (value,) = scalar.unpack_from(self.buf, self.pos)
            self.pos += scalar.size
            return bool(value) if vtype == GGUFValueType.BOOL else value
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            return self.array(what, 0)
        self.fail(f"{what} has unknown value type {vtype}")

    def array(self, what: str, depth: int, walk_only: bool = False) -> Any:
        """An array as a list, or a TruncatedArray when longer than ``max_array_len``.

        With ``walk_only`` (inside an array that is not kept) it only checks and skips the
        bytes, and returns None.
        """
        if depth >= _MAX_ARRAY_DEPTH:
            self.fail(f"{what}: arrays nested more than {_MAX_ARRAY_DEPTH} deep")
        item_type = self.u32(f"item type of {what}")
        count = self.u64(f"length of {what}")
        scalar = _SCALARS.get(item_type)
        if scalar is not None:
            item_size = scalar.size
        elif item_type == GGUFValueType.STRING:
            item_size = 8
        elif item_type == GGUFValueType.ARRAY:
            item_size = _MIN_ARRAY_BYTES
        else:
            self.fail(f"{what} is an array of unknown value type {item_type}")
        if count * item_size > self.remaining:
            self.fail(
                f"{what}: array length {count} of {_value_type_name(item_type)} needs at least "
                f"{count * item_size} bytes but only {self.remaining} remain past byte {self.pos}"
            )
        keep = not walk_only and (self.max_array_len < 0 or count <= self.max_array_len)

        result: list[Any] | None = None
        if scalar is not None:
            end = self.pos + count * item_size
            if keep:
                # One unpack for the whole array (token types, scores: ~150k items).
                values = struct.unpack_from(f"<{count}{scalar.format[-1]}", self.buf, self.pos)
                if item_type == GGUFValueType.BOOL:
                    result = [value != 0 for value in values]
                else:
                    result = list(values)
            self.pos = end
        elif item_type == GGUFValueType.STRING:
            result = self._strings(what, count, keep)
        else:
            items: list[Any] = []
            for i in range(count):
                item = self.array(f"{what}[{i}]", depth + 1, not keep)
                if keep:
                    items.append(item)
            result = items

        if keep:
            return result
        return None if walk_only else TruncatedArray(_value_type_name(item_type), count)

    def _strings(self, what: str, count: int, keep: bool, first: int = 0) -> list[str] | None:
        """The next ``count`` strings of an array (items ``first``…, for error messages),
        decoded when ``keep``, else only walked."""
        # Vocabularies hold ~150k strings: keep the loop tight, with locals and no calls
        # beyond the unpack, since this walk dominates the time to read a header.
        buf, pos, size = self.buf, self.pos, self.size
        unpack = _U64.unpack_from
        out: list[str] | None = [] if keep else None
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"length of {what}[{first + i}]")
            (n,) = unpack(buf, pos)
            end = pos + 8 + n
            if end > size:
                self.fail(
                    f"{what}[{first + i}]: string length {n} at byte {pos} runs past the end "
                    f"of the file ({size} bytes)"
                )
            if out is not None:
                out.append(buf[pos + 8 : end].decode("utf-8", errors="replace"))
            pos = end
        self.pos = pos
        return out

    def string_items(self, what: str, count: int, indices: Iterable[int]) -> dict[int, str]:
        """Decode the items at ``indices`` of a string array of ``count`` items starting
        here, walking no further than the last of them."""
        if count * 8 > self.remaining:
            self.fail(
                f"{what}: array length {count} of string needs at least {count * 8} bytes "
                f"but only {self.remaining} remain past byte {self.pos}"
            )
        out: dict[int, str] = {}
        at = 0
        for index in sorted({i for i in indices if 0 <= i < count}):
            self._strings(what, index - at, keep=False, first=at)
            kept = self._strings(what, 1, keep=True, first=index)
            assert kept is not None  # keep=True
            out[index] = kept[0]
            at = index + 1
        return out


def _parse_metadata(cur: _Cursor, kv_count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = cur.string(f"key #{i}")
        if key in metadata:
            cur.fail(f"duplicate metadata key {key!r}")
        vtype = cur.u32(f"value type of {key}")
        metadata[key] = cur.value(vtype, key)
    return metadata


def _alignment(cur: _Cursor, metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        cur.fail(f"general.alignment {alignment!r} is not a positive power of two")
    return alignment


def _parse_tensor_infos(
    cur: _Cursor, tensor_count: int, alignment: int
) -> tuple[list[tuple[str, tuple[int, ...], int, int, int]], int]:
    """Tensor infos as (name, shape, type, relative offset, n_bytes), and the data offset."""
    infos: list[tuple[str, tuple[int, ...], int, int, int]] = []
    seen: set[str] = set()
    for i in range(tensor_count):
        name = cur.string(f"name of tensor #{i}")
        if name in seen:
            cur.fail(f"duplicate tensor name {name!r}")
        seen.add(name)
        n_dims = cur.u32(f"dimension count of tensor {name}")
        if n_dims > GGML_MAX_DIMS:
            cur.fail(f"tensor {name} has {n_dims} dimensions (ggml allows {GGML_MAX_DIMS})")
        shape = tuple(cur.u64(f"dimension {d} of tensor {name}") for d in range(n_dims))
        if 0 in shape:
            cur.fail(f"tensor {name} has a zero dimension {list(shape)}")
        ggml_type = cur.u32(f"type of tensor {name}")
        sizes = GGML_BLOCK_SIZES.get(ggml_type)
        if sizes is None:
            cur.fail(f"tensor {name} has unknown ggml type {ggml_type}")
        block_size, type_size = sizes
        rel_offset = cur.u64(f"data offset of tensor {name}")
        if rel_offset % alignment:
            cur.fail(
                f"tensor {name} data offset {rel_offset} is not a multiple of "
                f"the alignment {alignment}"
            )
        # ggml quantises row by row, so each row (ne0) must be whole blocks.
        row = shape[0] if shape else 1
        if row % block_size:
            cur.fail(
                f"tensor {name}: row length {row} is not a multiple of "
                f"{ggml_type_name(ggml_type)}'s block size {block_size}"
            )
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        infos.append((name, shape, ggml_type, rel_offset, n_elements // block_size * type_size))
    data_offset = -(-cur.pos // alignment) * alignment
    return infos, data_offset


def _check_data_ranges(
    cur: _Cursor, infos: list[tuple[str, tuple[int, ...], int, int, int]], data_offset: int
) -> None:
    """Every tensor's bytes lie inside the file, and no two tensors share bytes."""
    prev_name, prev_end = "", 0
    for name, _shape, _type, rel, n_bytes in sorted(infos, key=lambda info: info[3]):
        start, end = data_offset + rel, data_offset + rel + n_bytes
        if end > cur.size:
            cur.fail(
                f"tensor {name} data (bytes {start}..{end}) extends past the end of "
                f"the file ({cur.size} bytes)"
            )
        if start < prev_end:
            cur.fail(f"tensor {name} data overlaps tensor {prev_name}")
        prev_name, prev_end = name, end


def _preamble(cur: _Cursor) -> tuple[int, int, int]:
    """Magic, version and counts, checked: (version, tensor count, key/value count)."""
    buf = cur.buf
    cur.need(4, "magic")
    if buf[0:4] != GGUF_MAGIC:
        cur.fail(f"not a GGUF file (bad magic {bytes(buf[0:4])!r})")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in SUPPORTED_VERSIONS:
            cur.fail(f"big-endian GGUF (version {swapped}) is not supported")
        cur.fail(f"unsupported GGUF version {version}")
    tensor_count = cur.u64("tensor count")
    kv_count = cur.u64("metadata key/value count")
    capacity = format_bytes(cur.size)
    if kv_count * _MIN_KV_BYTES > cur.remaining:
        cur.fail(f"metadata key/value count {kv_count} exceeds what a {capacity} file can hold")
    if tensor_count * _MIN_TENSOR_INFO_BYTES > cur.remaining - kv_count * _MIN_KV_BYTES:
        cur.fail(f"tensor count {tensor_count} exceeds what a {capacity} file can hold")
    return version, tensor_count, kv_count


def _parse(buf: mmap.mmap, path: Path, max_array_len: int) -> GGUFModel:
    cur = _Cursor(buf, str(path), max_array_len)
    version, tensor_count, kv_count = _preamble(cur)
    metadata = _parse_metadata(cur, kv_count)
    alignment = _alignment(cur, metadata)
    infos, data_offset = _parse_tensor_infos(cur, tensor_count, alignment)
    _check_data_ranges(cur, infos, data_offset)
    tensors = tuple(
        TensorInfo(name, shape, ggml_type, data_offset + rel, n_bytes)
        for name, shape, ggml_type, rel, n_bytes in infos
    )
    return GGUFModel(
        path=path,
        version=version,
        file_size=cur.size,
        data_offset=data_offset,
        metadata=MappingProxyType(metadata),
        tensors=tensors,
    )


def read_model(path: str | os.PathLike[str], *, max_array_len: int = 1024) -> GGUFModel:
    """Read a GGUF file's metadata and tensor infos; InvalidModelFile for anything unusable.

    Metadata arrays longer than ``max_array_len`` (the vocabulary, merges, scores) are
    walked but kept only as a TruncatedArray; a negative ``max_array_len`` keeps them all.
    """
    path = Path(path)
    with _mapped(path) as buf:
        return _parse(buf, path, max_array_len)


def read_string_items(
    path: str | os.PathLike[str], key: str, indices: Iterable[int]
) -> dict[int, str]:
    """The items at ``indices`` of the string array ``key`` (a vocabulary's BOS and EOS),
    without decoding the rest: the header is walked only as far as the last index asked
    for. Indices the array does not hold, or a key that is not a string array, are left
    out. Reading a whole vocabulary for its two special tokens took 0.1 s of the first
    chat request."""
    path = Path(path)
    with _mapped(path) as buf:
        cur = _Cursor(buf, str(path), 0)
        _, _, kv_count = _preamble(cur)
        for i in range(kv_count):
            name = cur.string(f"key #{i}")
            vtype = cur.u32(f"value type of {name}")
            if name != key:
                cur.value(vtype, name)  # arrays are walked, not kept (max_array_len 0)
                continue
            if vtype != GGUFValueType.ARRAY:
                return {}
            item_type = cur.u32(f"item type of {name}")
            count = cur.u64(f"length of {name}")
            if item_type != GGUFValueType.STRING:
                return {}
            return cur.string_items(name, count, indices)
    return {}


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    """The file, memory-mapped read-only; InvalidModelFile for anything unusable."""
    name = str(path)
    try:
        # stat before open: opening a FIFO or device for reading could block forever.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidModelFile(name, "is a directory, not a GGUF file")
        if not stat.S_ISREG(mode):
            raise InvalidModelFile(name, "not a regular file")
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise InvalidModelFile(name, "empty file, not a GGUF file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                yield buf
    except FileNotFoundError:
        raise InvalidModelFile(name, "no such file") from None
    except PermissionError:
        raise InvalidModelFile(name, "permission denied") from None
    except OSError as exc:
        raise InvalidModelFile(name, f"cannot read: {exc.strerror or exc}") from None
