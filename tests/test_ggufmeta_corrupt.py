"""Corrupt GGUF files: truncations, lying header fields and random damage.

Every case must end in exactly one InvalidModelFile naming the file, never another
exception, a hang or a huge allocation. Copies hold only the demo's header; the data
section is left as a sparse hole, since the reader never reads it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pollama.demo import demo_model_path
from pollama.errors import InvalidModelFile
from pollama.ggufmeta import GGUFModel, read_model


class Demo:
    """The demo's header bytes and the positions of the fields the tests damage."""

    def __init__(self) -> None:
        path = demo_model_path()
        model = read_model(path)
        self.size = model.file_size
        self.data_offset = model.data_offset
        with open(path, "rb") as f:
            self.header = f.read(self.data_offset)
        # The first tensor info starts with token_embd.weight's name.
        self.tensor_infos_start = self._find_string(b"token_embd.weight", last=True)

    def _find_string(self, text: bytes, last: bool = False) -> int:
        needle = struct.pack("<Q", len(text)) + text
        found = self.header.rfind(needle) if last else self.header.find(needle)
        assert found >= 0, text
        return found

    def value_at(self, key: str) -> int:
        """Offset of the key's value type field (its value follows)."""
        return self._find_string(key.encode()) + 8 + len(key)

    def tensor_at(self, name: str) -> int:
        """Offset of the tensor info's n_dims field (dims, type, offset follow)."""
        return self._find_string(name.encode(), last=True) + 8 + len(name)


@pytest.fixture(scope="module")
def demo() -> Demo:
    return Demo()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corrupt")


def write_copy(path: Path, header: bytes, size: int) -> Path:
    """``header`` followed by a hole up to ``size`` bytes (or cut short at ``size``)."""
    with open(path, "wb") as f:
        f.write(header[:size])
    if size > len(header):
        os.truncate(path, size)
    return path


def expect_invalid(path: Path, match: str | None = None) -> InvalidModelFile:
    with pytest.raises(InvalidModelFile, match=match) as info:
        read_model(path)
    assert str(path) in str(info.value)
    return info.value


def test_intact_header_copy_parses(demo: Demo, scratch: Path) -> None:
    model = read_model(write_copy(scratch / "intact.gguf", demo.header, demo.size))
    assert len(model.tensors) == 272 and model.data_offset == demo.data_offset


def truncation_points(demo: Demo) -> list[int]:
    kv_end = demo.tensor_infos_start
    points = list(range(0, 4096, 13))
    points += list(range(4096, kv_end, (kv_end - 4096) // 30))  # tokenizer arrays
    points += list(range(kv_end, demo.data_offset, (demo.data_offset - kv_end) // 50))
    points += [demo.data_offset - 1, demo.data_offset, demo.data_offset + 1]
    points += [demo.data_offset + 4096, demo.size // 2, demo.size - 1]
    return points


def test_truncated_anywhere(demo: Demo, scratch: Path) -> None:
    path = scratch / "truncated.gguf"
    points = truncation_points(demo)
    assert len(points) > 400
    for size in points:
        write_copy(path, demo.header, size)
        with pytest.raises(InvalidModelFile) as info:
            read_model(path)
        assert str(path) in str(info.value), size


def test_truncation_messages(demo: Demo, scratch: Path) -> None:
    path = scratch / "cut.gguf"
    expect_invalid(write_copy(path, demo.header, 2), "truncated: magic")
    expect_invalid(write_copy(path, demo.header, 12), "truncated: tensor count")
    expect_invalid(write_copy(path, demo.header, demo.size - 1), "extends past the end")


def patched(demo: Demo, scratch: Path, pos: int, data: bytes) -> Path:
    header = bytearray(demo.header)
    header[pos : pos + len(data)] = data
    return write_copy(scratch / "patched.gguf", bytes(header), demo.size)


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


# (what is damaged, where, the new bytes, a fragment of the expected message)
Patch = Callable[[Demo], tuple[int, bytes]]
PATCHES: dict[str, tuple[Patch, str]] = {
    "bad magic": (lambda d: (0, b"GGML"), "bad magic"),
    "version 1": (lambda d: (4, u32(1)), "unsupported GGUF version 1"),
    "version 99": (lambda d: (4, u32(99)), "unsupported GGUF version 99"),
    "big-endian": (lambda d: (4, struct.pack(">I", 3)), "big-endian"),
    "tensor count 2**63-1": (lambda d: (8, u64(2**63 - 1)), "tensor count"),
    "tensor count 2**40": (lambda d: (8, u64(2**40)), "tensor count 1099511627776 exceeds"),
    "kv count 2**63-1": (lambda d: (16, u64(2**63 - 1)), "key/value count"),
    "kv count 2**40": (lambda d: (16, u64(2**40)), "key/value count"),
    "key length 2**62": (lambda d: (24, u64(2**62)), "string length 4611686018427387904"),
    "string value length 2**62": (
        lambda d: (d.value_at("tokenizer.chat_template") + 4, u64(2**62)),
        "tokenizer.chat_template: string length",
    ),
    "token string length 2**62": (
        lambda d: (d.value_at("tokenizer.ggml.tokens") + 16, u64(2**62)),
        r"tokenizer.ggml.tokens\[0\]: string length",
    ),
    "array length 2**50": (
        lambda d: (d.value_at("tokenizer.ggml.tokens") + 8, u64(2**50)),
        "array length 1125899906842624",
    ),
    "numeric array length 2**50": (
        lambda d: (d.value_at("tokenizer.ggml.token_type") + 8, u64(2**50)),
        "array length",
    ),
    "value type 77": (
        lambda d: (d.value_at("general.architecture"), u32(77)),
        "unknown value type 77",
    ),
    "array item type 77": (
        lambda d: (d.value_at("tokenizer.ggml.tokens") + 4, u32(77)),
        "array of unknown value type 77",
    ),
    "duplicate key": (lambda d: (d.value_at("general.name") - 12, b"general.type"), "duplicate"),
    "n_dims 9": (lambda d: (d.tensor_at("blk.0.ffn_down.weight"), u32(9)), "9 dimensions"),
    "zero dimension": (
        lambda d: (d.tensor_at("blk.0.ffn_down.weight") + 12, u64(0)),
        "zero dimension",
    ),
    "partial block": (
        lambda d: (d.tensor_at("blk.0.ffn_down.weight") + 4, u64(1537)),
        "not a multiple of Q4_1's block size 32",
    ),
    "ggml type 200": (
        lambda d: (d.tensor_at("blk.0.ffn_down.weight") + 20, u32(200)),
        "unknown ggml type 200",
    ),
    "removed ggml type 4 (Q4_2)": (
        lambda d: (d.tensor_at("blk.0.ffn_down.weight") + 20, u32(4)),
        "unknown ggml type 4",
    ),
    "offset past EOF": (
        lambda d: (d.tensor_at("blk.0.ffn_down.weight") + 24, u64(2**40)),
        "blk.0.ffn_down.weight data .* extends past the end of the file",
    ),
    "unaligned offset": (
        lambda d: (d.tensor_at("blk.0.ffn_down.weight") + 24, u64(30081024 + 2304 + 1)),
        "not a multiple of the alignment 32",
    ),
    "overlapping tensors": (
        lambda d: (d.tensor_at("blk.0.ffn_down.weight") + 24, u64(0)),
        "overlaps",
    ),
    "duplicate tensor name": (
        lambda d: (d.tensor_at("blk.0.ffn_gate.weight") - 21, b"blk.0.ffn_down.weight"),
        "duplicate tensor name 'blk.0.ffn_down.weight'",
    ),
}


@pytest.mark.parametrize("case", sorted(PATCHES))
def test_lying_header_fields(demo: Demo, scratch: Path, case: str) -> None:
    patch, message = PATCHES[case]
    pos, data = patch(demo)
    expect_invalid(patched(demo, scratch, pos, data), message)


def test_patch_positions_point_at_the_fields(demo: Demo) -> None:
    # Guards the table above: each offset must land on the field it claims to damage.
    def read_u64(pos: int) -> int:
        return int(struct.unpack_from("<Q", demo.header, pos)[0])

    def read_u32(pos: int) -> int:
        return int(struct.unpack_from("<I", demo.header, pos)[0])

    tokens = demo.value_at("tokenizer.ggml.tokens")
    assert read_u32(tokens) == gguf.GGUFValueType.ARRAY
    assert read_u32(tokens + 4) == gguf.GGUFValueType.STRING
    assert read_u64(tokens + 8) == 49152
    ffn_down = demo.tensor_at("blk.0.ffn_down.weight")
    assert read_u32(ffn_down) == 2
    assert (read_u64(ffn_down + 4), read_u64(ffn_down + 12)) == (1536, 576)
    assert read_u32(ffn_down + 20) == gguf.GGMLQuantizationType.Q4_1
    assert demo.data_offset + read_u64(ffn_down + 24) == 31868992
    assert demo.header[24:32] == u64(len("general.architecture"))


def raw_gguf(kv: bytes, n_kv: int, tensors: bytes = b"", n_tensors: int = 0) -> bytes:
    return b"GGUF" + u32(3) + u64(n_tensors) + u64(n_kv) + kv + tensors


def raw_string(text: str) -> bytes:
    return u64(len(text.encode())) + text.encode()


ARCH_KV = raw_string("general.architecture") + u32(gguf.GGUFValueType.STRING) + raw_string("x")


def test_deeply_nested_arrays(tmp_path: Path) -> None:
    value = u32(gguf.GGUFValueType.ARRAY) + u64(1)
    nested = value * 20 + u32(gguf.GGUFValueType.UINT8) + u64(0)
    kv = raw_string("deep") + u32(gguf.GGUFValueType.ARRAY) + nested
    path = tmp_path / "deep.gguf"
    path.write_bytes(raw_gguf(ARCH_KV + kv, 2))
    expect_invalid(path, "nested more than")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_bad_alignment(tmp_path: Path, alignment: int) -> None:
    kv = raw_string("general.alignment") + u32(gguf.GGUFValueType.UINT32) + u32(alignment)
    path = tmp_path / "align.gguf"
    path.write_bytes(raw_gguf(ARCH_KV + kv, 2))
    expect_invalid(path, "general.alignment")


def test_hand_built_minimal_file_parses(tmp_path: Path) -> None:
    # Checks raw_gguf itself, so the failures above are the reader's doing.
    tensor = raw_string("t.weight") + u32(1) + u64(8) + u32(gguf.GGMLQuantizationType.F32)
    data_start = -(-(24 + len(ARCH_KV) + len(tensor) + 8) // 32) * 32
    body = raw_gguf(ARCH_KV, 1, tensor + u64(0), 1)
    path = tmp_path / "ok.gguf"
    path.write_bytes(body.ljust(data_start, b"\0") + bytes(32))
    model = read_model(path)
    assert model.data_offset == data_start and model.tensors[0].n_bytes == 32


def exercise(model: GGUFModel) -> None:
    """Touch every accessor; each may work or raise InvalidModelFile."""
    accessors: list[Callable[[], object]] = [
        lambda: model.block_count,
        lambda: model.context_length,
        lambda: model.embedding_length,
        lambda: model.feed_forward_length,
        lambda: model.head_count_max,
        lambda: model.head_count_kv_max,
        lambda: model.head_count_kv_min,
        lambda: model.key_length,
        lambda: model.value_length,
        lambda: model.vocab_size,
        lambda: model.pooling_type,
        lambda: model.sliding_window,
        model.swa_layers,
        lambda: model.file_type,
        lambda: model.parameter_size,
        lambda: model.chat_template,
        lambda: model.has_output_weight,
        lambda: model.ssm_state_size,
        model.layers,
        lambda: [(model.head_count(i), model.head_count_kv(i)) for i in range(model.block_count)],
    ]
    for access in accessors:
        try:
            access()
        except InvalidModelFile as exc:
            assert str(model.path) in str(exc)


damage = st.lists(
    st.one_of(
        st.tuples(st.just("byte"), st.integers(0, 4095), st.integers(0, 255)),
        st.tuples(
            st.just("u64"),
            st.integers(0, 4088),
            st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**64 - 1]),
        ),
    ),
    min_size=1,
    max_size=6,
)


def apply_damage(header: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(header)
    for kind, pos, value in ops:
        if kind == "byte":
            out[pos] = value
        else:
            out[pos : pos + 8] = u64(value)
    return bytes(out)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=damage)
def test_random_damage_to_the_demo_header(demo: Demo, scratch: Path, ops: list) -> None:
    path = write_copy(scratch / "fuzz.gguf", apply_damage(demo.header, ops), demo.size)
    try:
        model = read_model(path)
    except InvalidModelFile as exc:
        assert str(path) in str(exc)
    else:
        exercise(model)


@pytest.fixture(scope="module")
def compact(scratch: Path) -> tuple[bytes, int]:
    """A small header with every part of a model file: varied metadata, per-layer arrays
    and a dozen tensor infos. Returns its header bytes and full (sparse) size."""
    path = scratch / "compact.gguf"
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_block_count(2)
    writer.add_context_length(4096)
    writer.add_embedding_length(64)
    writer.add_head_count([4, 4])
    writer.add_head_count_kv([1, 2])
    writer.add_sliding_window(512)
    writer.add_sliding_window_pattern([True, False])
    writer.add_token_list([f"tok{i}" for i in range(40)])
    writer.add_token_scores([float(i) for i in range(40)])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_float64("test.f64", 2.5)
    writer.add_bool("test.bool", True)
    writer.add_chat_template("{{ messages }}")
    shapes = {"token_embd.weight": (40, 64), "output_norm.weight": (64,)}
    for layer in range(2):
        for part in ("attn_q", "attn_k", "attn_v", "ffn_up", "ffn_down"):
            shapes[f"blk.{layer}.{part}.weight"] = (64, 64)
    for name, shape in shapes.items():
        writer.add_tensor_info(name, shape, np.dtype(np.float16), 2 * int(np.prod(shape)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header = path.read_bytes()
    data_offset = -(-len(header) // 32) * 32
    size = data_offset + sum(-(-2 * int(np.prod(s)) // 32) * 32 for s in shapes.values())
    model = read_model(write_copy(path, header, size))
    assert len(model.tensors) == 12 and model.swa_layers() == (True, False)
    return header, size


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_damage_to_a_compact_header(
    compact: tuple[bytes, int], scratch: Path, data: st.DataObject
) -> None:
    header, size = compact
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("byte"), st.integers(0, len(header) - 1), st.integers(0, 255)),
                st.tuples(
                    st.just("u64"),
                    st.integers(0, len(header) - 8),
                    st.sampled_from([0, 1, 9, 77, 2**31, 2**62, 2**64 - 1]),
                ),
            ),
            min_size=1,
            max_size=4,
        )
    )
    cut = data.draw(st.one_of(st.just(size), st.integers(0, size)))
    path = write_copy(scratch / "fuzz-compact.gguf", apply_damage(header, ops), cut)
    try:
        model = read_model(path)
    except InvalidModelFile as exc:
        assert str(path) in str(exc)
    else:
        exercise(model)
