"""The GGUF header reader: the demo model's facts, and synthetic files for the accessors."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_files import write_gguf

from pollama.demo import demo_model_path
from pollama.errors import InvalidModelFile
from pollama.ggufmeta import (
    GGUFModel,
    LayerGroup,
    TensorInfo,
    TruncatedArray,
    read_model,
    read_string_items,
)
from pollama.units import GiB


@pytest.fixture(scope="module")
def demo() -> GGUFModel:
    return read_model(demo_model_path())


# -- the demo model ----------------------------------------------------------------------


def test_demo_header_facts(demo: GGUFModel) -> None:
    assert demo.version == 3
    assert demo.architecture == "llama"
    assert demo.block_count == 30
    assert len(demo.tensors) == 272
    assert demo.context_length == 8192
    assert demo.embedding_length == 576
    assert demo.feed_forward_length == 1536
    assert demo.head_count(0) == demo.head_count(29) == demo.head_count_max == 9
    assert demo.head_count_kv(0) == demo.head_count_kv_max == demo.head_count_kv_min == 3
    assert demo.key_length == demo.value_length == 576 // 9
    assert demo.vocab_size == 49152
    assert demo.file_size == demo_model_path().stat().st_size
    assert demo.get("llama.rope.freq_base") == pytest.approx(100000.0)
    assert demo.arch_get("attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert demo.get("no.such.key", "fallback") == "fallback"
    assert demo.get("general.languages") == ["en"]
    assert demo.get("tokenizer.ggml.add_bos_token") is False


def test_demo_is_a_plain_q4_1_chat_model(demo: GGUFModel) -> None:
    assert demo.file_type == "Q4_1"
    assert demo.parameter_count == 134_515_008
    assert demo.parameter_size == "134.52M"
    assert demo.chat_template is not None and "<|im_start|>" in demo.chat_template
    assert demo.pooling_type is None and not demo.is_embedding_model
    assert demo.sliding_window == 0
    assert demo.swa_layers() == (False,) * 30
    assert not demo.has_output_weight  # tied to token_embd
    assert (demo.ssm_conv_kernel, demo.ssm_inner_size, demo.ssm_state_size) == (0, 0, 0)
    assert demo.ssm_group_count == 0


def test_demo_layers(demo: GGUFModel) -> None:
    layers = demo.layers()
    assert set(layers) == {f"blk.{i}" for i in range(30)} | {"token_embd", "output_norm"}
    assert "output" not in layers
    blk0 = layers["blk.0"]
    assert isinstance(blk0, LayerGroup) and len(blk0.tensors) == 9
    assert blk0.size == sum(t.n_bytes for t in blk0.tensors)
    ffn_down = next(t for t in blk0.tensors if t.name == "blk.0.ffn_down.weight")
    assert ffn_down.shape == (1536, 576)
    assert ffn_down.type_name == "Q4_1"
    assert ffn_down.n_elements == 1536 * 576
    assert ffn_down.n_bytes == 1536 * 576 // 32 * 20 == 552960
    embd = layers["token_embd"].tensors[0]
    assert (embd.name, embd.type_name, embd.shape) == ("token_embd.weight", "Q8_0", (576, 49152))
    assert layers["output_norm"].tensors[0].type_name == "F32"
    assert sum(g.size for g in layers.values()) == sum(t.n_bytes for t in demo.tensors)


def test_demo_tensor_data_lies_in_the_file(demo: GGUFModel) -> None:
    assert demo.data_offset % 32 == 0
    assert demo.data_offset + sum(t.n_bytes for t in demo.tensors) <= demo.file_size
    by_offset = sorted(demo.tensors, key=lambda t: t.offset)
    assert by_offset[0].offset == demo.data_offset
    assert by_offset[-1].offset + by_offset[-1].n_bytes == demo.file_size
    for before, after in zip(by_offset, by_offset[1:], strict=False):
        assert before.offset + before.n_bytes <= after.offset


def test_long_arrays_are_truncated_unless_asked_for(demo: GGUFModel) -> None:
    tokens = demo.get("tokenizer.ggml.tokens")
    assert tokens == TruncatedArray("string", 49152)
    assert demo.get("tokenizer.ggml.token_type") == TruncatedArray("int32", 49152)
    full = read_model(demo_model_path(), max_array_len=-1)
    tokens = full.get("tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) == 49152
    assert all(isinstance(t, str) for t in tokens)
    assert tokens[0] == "<|endoftext|>"
    types = full.get("tokenizer.ggml.token_type")
    assert isinstance(types, list) and len(types) == 49152 and types[0] in (1, 3)
    assert len(full.get("tokenizer.ggml.merges")) == 48900
    assert full.vocab_size == 49152


def test_string_items_are_read_without_the_rest_of_the_array() -> None:
    full = read_model(demo_model_path(), max_array_len=-1)
    tokens = full.get("tokenizer.ggml.tokens")
    merges = full.get("tokenizer.ggml.merges")
    picked = read_string_items(demo_model_path(), "tokenizer.ggml.tokens", [49151, 0, 2, 2, 777])
    assert picked == {i: tokens[i] for i in (0, 2, 777, 49151)}
    assert read_string_items(demo_model_path(), "tokenizer.ggml.merges", [48899]) == {
        48899: merges[48899]
    }
    # Out of range, negative, not an array of strings, or no such key: left out.
    assert read_string_items(demo_model_path(), "tokenizer.ggml.tokens", [49152, -1]) == {}
    assert read_string_items(demo_model_path(), "tokenizer.ggml.token_type", [0]) == {}
    assert read_string_items(demo_model_path(), "general.architecture", [0]) == {}
    assert read_string_items(demo_model_path(), "no.such.key", [0]) == {}


def test_string_items_of_a_truncated_file_fail_as_invalid(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(demo_model_path(), "rb") as src:
        cut.write_bytes(src.read(200_000))  # ends inside the vocabulary
    # Even an item before the cut: the file cannot hold the array it claims, as read_model
    # would say.
    for index in (10, 49151):
        with pytest.raises(InvalidModelFile, match="cut.gguf"):
            read_string_items(cut, "tokenizer.ggml.tokens", [index])


def test_max_array_len_zero_truncates_every_array() -> None:
    model = read_model(demo_model_path(), max_array_len=0)
    assert model.get("general.languages") == TruncatedArray("string", 1)


# -- synthetic files ---------------------------------------------------------------------


def test_every_value_type_round_trips(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(2)
        w.add_uint8("t.u8", 255)
        w.add_int8("t.i8", -128)
        w.add_uint16("t.u16", 65535)
        w.add_int16("t.i16", -32768)
        w.add_uint32("t.u32", 2**32 - 1)
        w.add_int32("t.i32", -(2**31))
        w.add_uint64("t.u64", 2**64 - 1)
        w.add_int64("t.i64", -(2**63))
        w.add_float32("t.f32", 0.5)
        w.add_float64("t.f64", 1e300)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "héllo ✓")
        w.add_array("t.floats", [0.25, -1.5])
        w.add_array("t.bools", [True, False, True])
        w.add_array("t.nested", [[1, 2], [3]])
        w.add_array("t.nested_strings", [["a", "b"], ["c"]])
        w.add_key_value("t.u64s", [1, 2**40], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT64)

    model = read_model(write_gguf(tmp_path / "types.gguf", "test", kv))
    expected = {
        "t.u8": 255,
        "t.i8": -128,
        "t.u16": 65535,
        "t.i16": -32768,
        "t.u32": 2**32 - 1,
        "t.i32": -(2**31),
        "t.u64": 2**64 - 1,
        "t.i64": -(2**63),
        "t.f32": 0.5,
        "t.f64": 1e300,
        "t.bool": True,
        "t.str": "héllo ✓",
        "t.floats": [0.25, -1.5],
        "t.bools": [True, False, True],
        "t.nested": [[1, 2], [3]],
        "t.nested_strings": [["a", "b"], ["c"]],
        "t.u64s": [1, 2**40],
    }
    for key, value in expected.items():
        assert model.get(key) == value, key
    assert model.architecture == "test"
    # An inner array over the limit is truncated on its own; the outer one is kept.
    short = read_model(tmp_path / "types.gguf", max_array_len=1)
    assert short.get("t.nested") == TruncatedArray("array", 2)
    assert short.get("t.nested_strings") == TruncatedArray("array", 2)
    assert short.get("t.u8") == 255


def test_per_layer_head_counts(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(4)
        w.add_embedding_length(256)
        w.add_head_count(8)
        w.add_head_count_kv([0, 2, 4, 2])  # block 0 recurrent, as in hybrid models
        w.add_feed_forward_length([512, 1024, 768, 0])

    model = read_model(write_gguf(tmp_path / "hybrid.gguf", "hybrid", kv))
    assert [model.head_count(i) for i in range(4)] == [8, 8, 8, 8]
    assert [model.head_count_kv(i) for i in range(4)] == [0, 2, 4, 2]
    assert model.head_count_kv_max == 4
    assert model.head_count_kv_min == 2
    assert model.head_count_max == 8
    assert model.feed_forward_length == 1024
    assert model.key_length == model.value_length == 256 // 8
    with pytest.raises(IndexError):
        model.head_count_kv(4)


def test_head_count_kv_defaults_to_head_count(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(3)
        w.add_head_count([4, 8, 16])
        w.add_key_length(128)

    model = read_model(write_gguf(tmp_path / "mha.gguf", "mha", kv))
    assert [model.head_count_kv(i) for i in range(3)] == [4, 8, 16]
    assert model.head_count_kv_max == 16 and model.head_count_kv_min == 4
    assert model.key_length == 128
    assert model.value_length == 0  # no embedding_length to derive it from


def test_per_layer_array_must_match_block_count(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(3)
        w.add_head_count_kv([1, 2])

    model = read_model(write_gguf(tmp_path / "short.gguf", "bad", kv))
    with pytest.raises(InvalidModelFile, match="2 entries for 3 blocks"):
        model.head_count_kv(0)


def test_gemma3_default_sliding_window_pattern(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(12)
        w.add_sliding_window(512)

    model = read_model(write_gguf(tmp_path / "gemma3.gguf", "gemma3", kv))
    assert model.sliding_window == 512
    period = (True,) * 5 + (False,)
    assert model.swa_layers() == period * 2


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("gemma2", (True, False) * 3),
        ("cohere2", (True, True, True, False, True, True)),
        ("smallthinker", (False, True, True, True, False, True)),  # dense first
        ("llama", (False,) * 6),  # llama.cpp windows no layer of an unknown arch
    ],
)
def test_architecture_default_patterns(tmp_path: Path, arch: str, expected: tuple) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(6)
        w.add_sliding_window(4096)

    assert read_model(write_gguf(tmp_path / "m.gguf", arch, kv)).swa_layers() == expected


def test_explicit_bool_pattern(tmp_path: Path) -> None:
    pattern = [True, False, False, True, True]

    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(5)
        w.add_sliding_window(128)
        w.add_sliding_window_pattern(pattern)

    model = read_model(write_gguf(tmp_path / "pattern.gguf", "gemma3", kv))
    assert model.swa_layers() == tuple(pattern)


def test_integer_pattern_overrides_the_period(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(6)
        w.add_sliding_window(128)
        w.add_uint32("gemma3.attention.sliding_window_pattern", 3)

    model = read_model(write_gguf(tmp_path / "period.gguf", "gemma3", kv))
    assert model.swa_layers() == (True, True, False) * 2


def test_no_sliding_window_means_no_swa_layers(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(4)

    model = read_model(write_gguf(tmp_path / "full.gguf", "gemma3", kv))
    assert model.sliding_window == 0
    assert model.swa_layers() == (False,) * 4


def test_missing_architecture_is_invalid(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "noarch.gguf", "")  # the writer skips empty strings
    with pytest.raises(InvalidModelFile, match="general.architecture") as info:
        read_model(path)
    assert str(path) in str(info.value)


def test_missing_or_mistyped_keys_raise_invalid_model_file(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_string("odd.context_length", "long")
        w.add_float32("odd.embedding_length", 4.0)
        w.add_bool("odd.attention.head_count", True)
        w.add_string("odd.attention.sliding_window_pattern", "x")
        w.add_uint32("odd.attention.sliding_window", 16)
        w.add_uint32("tokenizer.chat_template", 1)
        w.add_int32("odd.vocab_size", -1)

    model = read_model(write_gguf(tmp_path / "odd.gguf", "odd", kv))
    for access in (
        lambda: model.block_count,
        lambda: model.context_length,
        lambda: model.embedding_length,
        lambda: model.head_count_max,
        lambda: model.swa_layers(),
        lambda: model.chat_template,
        lambda: model.vocab_size,
    ):
        with pytest.raises(InvalidModelFile) as info:
            access()
        assert str(model.path) in str(info.value)
    with pytest.raises(InvalidModelFile, match="missing required key odd.block_count"):
        _ = model.block_count


def test_absurd_block_count_is_refused(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_uint64("big.block_count", 2**60)
        w.add_uint32("big.attention.sliding_window", 4)

    model = read_model(write_gguf(tmp_path / "big.gguf", "big", kv))
    with pytest.raises(InvalidModelFile, match="block_count"):
        model.swa_layers()


def test_vocab_size_fallbacks(tmp_path: Path) -> None:
    def with_tokens(w: gguf.GGUFWriter) -> None:
        w.add_token_list(["a", "b", "c"])

    path = write_gguf(tmp_path / "tokens.gguf", "x", with_tokens)
    assert read_model(path).vocab_size == 3
    assert read_model(path, max_array_len=2).vocab_size == 3  # a TruncatedArray counts
    embd_only = write_gguf(tmp_path / "embd.gguf", "x")  # token_embd is [8, 4] in ggml order
    assert read_model(embd_only).vocab_size == 4


def set_file_type(writer: gguf.GGUFWriter, code: int) -> None:
    writer.add_file_type(code)


def test_file_type_names_and_guess(tmp_path: Path) -> None:
    for code, name in ((0, "F32"), (1, "F16"), (15, "Q4_K_M"), (7, "Q8_0"), (999, "unknown")):
        path = write_gguf(tmp_path / f"ft{code}.gguf", "x", partial(set_file_type, code=code))
        assert read_model(path).file_type == name
    tensors: dict[str, np.ndarray] = {
        "a.weight": np.zeros((2, 32), np.float16),
        "b.weight": np.zeros((2, 32), np.float16),
        "c.weight": np.zeros((2, 32), np.float32),
        "norm.weight": np.zeros(32, np.float32),
        "norm2.weight": np.zeros(32, np.float32),
    }
    guessed = read_model(write_gguf(tmp_path / "guess.gguf", "x", tensors=tensors))
    assert guessed.file_type == "F16"  # 1-D norms do not count
    assert guessed.parameter_count == 3 * 64 + 2 * 32
    assert guessed.parameter_size == "256"


def test_parameter_count_from_metadata(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "pc.gguf", "x", lambda w: w.add_uint64("general.parameter_count", 8_030_261_248)
    )
    assert read_model(path).parameter_size == "8.0B"


def test_embedding_model_and_ssm_keys(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_pooling_type(gguf.PoolingType.MEAN)
        w.add_ssm_conv_kernel(4)
        w.add_ssm_inner_size(1536)
        w.add_ssm_state_size(16)
        w.add_ssm_group_count(1)

    model = read_model(write_gguf(tmp_path / "emb.gguf", "bert", kv))
    assert model.is_embedding_model and model.pooling_type == int(gguf.PoolingType.MEAN)
    assert (model.ssm_conv_kernel, model.ssm_inner_size) == (4, 1536)
    assert (model.ssm_state_size, model.ssm_group_count) == (16, 1)


def test_layer_grouping_and_output_weight(tmp_path: Path) -> None:
    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": np.zeros((4, 8), np.float32),
        "blk.0.attn_q.weight": np.zeros((8, 8), np.float32),
        "blk.0.attn_norm.weight": np.zeros(8, np.float32),
        "blk.1.attn_q.weight": np.zeros((8, 8), np.float16),
        "rope_freqs.weight": np.zeros(4, np.float32),
        "v.blk.0.attn_q.weight": np.zeros((8, 8), np.float32),
        "output_norm.weight": np.zeros(8, np.float32),
        "output.weight": np.zeros((4, 8), np.float32),
    }
    model = read_model(write_gguf(tmp_path / "groups.gguf", "x", tensors=tensors))
    layers = model.layers()
    assert list(layers) == [
        "token_embd",
        "blk.0",
        "blk.1",
        "rope_freqs",
        "v",
        "output_norm",
        "output",
    ]
    assert layers["blk.0"].size == 8 * 8 * 4 + 8 * 4
    assert layers["blk.1"].size == 8 * 8 * 2
    assert model.has_output_weight


def test_custom_alignment(tmp_path: Path) -> None:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_custom_alignment(64)

    tensors: dict[str, np.ndarray] = {
        "a.weight": np.zeros(3, np.float32),
        "b.weight": np.zeros(5, np.float32),
    }
    model = read_model(write_gguf(tmp_path / "align.gguf", "x", kv, tensors))
    assert model.data_offset % 64 == 0
    assert all((t.offset - model.data_offset) % 64 == 0 for t in model.tensors)
    assert [t.n_bytes for t in model.tensors] == [12, 20]


def test_multi_gigabyte_sparse_file(tmp_path: Path) -> None:
    # Only the header is real; the data section is a hole. The reader must not need it.
    path = tmp_path / "huge.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    big_shape = (49152, 32768)  # numpy order; 3 GiB of F16
    writer.add_tensor_info("token_embd.weight", big_shape, np.dtype(np.float16), 3 * GiB)
    writer.add_tensor_info("output_norm.weight", (32768,), np.dtype(np.float32), 32768 * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header_end = path.stat().st_size
    data_offset = -(-header_end // 32) * 32
    os.truncate(path, data_offset + 3 * GiB + 32768 * 4)

    model = read_model(path)
    assert model.file_size == data_offset + 3 * GiB + 32768 * 4
    assert model.data_offset == data_offset
    embd, norm = model.tensors
    assert embd == TensorInfo("token_embd.weight", (32768, 49152), 1, data_offset, 3 * GiB)
    assert norm.offset == data_offset + 3 * GiB and norm.n_bytes == 32768 * 4
    assert model.file_type == "F16"


def test_unusable_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="no such file"):
        read_model(tmp_path / "missing.gguf")
    with pytest.raises(InvalidModelFile, match="directory"):
        read_model(tmp_path)
    empty = tmp_path / "empty.gguf"
    empty.touch()
    with pytest.raises(InvalidModelFile, match="empty"):
        read_model(empty)
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)  # opening it would block until a writer came along
    with pytest.raises(InvalidModelFile, match="not a regular file"):
        read_model(fifo)
