"""Load-time option resolution: the rules DESIGN.md lists, one test each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import pytest
from gguf_files import write_gguf

from pollama.demo import demo_model_path
from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.errors import BadRequest, InvalidOption
from pollama.ggufmeta import GGUFModel, read_model
from pollama.options.load import FlashAttention, LoadOptions, resolve_load_options
from pollama.options.parameters import OPTIONS, OptionKind, names, validate_options
from pollama.protocol.wire import SamplingOptions
from pollama.scheduler.keepalive import load_options
from pollama.settings import Settings
from pollama.units import GiB, MiB

SYSTEM = SystemInfo(total_memory=24 * GiB, free_memory=20 * GiB, free_swap=0, thread_count=6)
AMPERE = DeviceInfo(DeviceID("CUDA", "0"), "sim", 24 * GiB, 24 * GiB, compute_major=8)
PASCAL = DeviceInfo(DeviceID("CUDA", "1"), "old", 8 * GiB, 8 * GiB, compute_major=6)


@pytest.fixture(scope="module")
def demo() -> GGUFModel:
    return read_model(demo_model_path())


@pytest.fixture
def embedder(tmp_path: Path) -> GGUFModel:
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(2)
        w.add_context_length(512)
        w.add_embedding_length(64)
        w.add_head_count(4)
        w.add_pooling_type(gguf.PoolingType.MEAN)

    return read_model(write_gguf(tmp_path / "embed.gguf", "bert", kv))


def test_context_is_clamped_to_training_context(demo):
    config = resolve_load_options(demo, LoadOptions(num_ctx=100_000), SYSTEM)
    assert config.num_ctx == 8192
    assert any("n_ctx_train=8192" in w for w in config.warnings)
    assert resolve_load_options(demo, LoadOptions(num_ctx=2048), SYSTEM).warnings == ()


def test_batch_never_exceeds_context(demo):
    config = resolve_load_options(demo, LoadOptions(num_ctx=256, num_batch=512), SYSTEM)
    assert config.batch_size == 256


def test_embedding_models_get_a_batch_as_large_as_the_context(embedder):
    config = resolve_load_options(embedder, LoadOptions(num_ctx=512, num_batch=128), SYSTEM)
    assert config.batch_size == 512
    # Ollama keeps flash attention off for embedding models.
    assert config.flash_attention is FlashAttention.DISABLED


def test_threads_default_to_physical_cores(demo):
    assert resolve_load_options(demo, LoadOptions(), SYSTEM).num_threads == 6
    assert resolve_load_options(demo, LoadOptions(num_thread=3), SYSTEM).num_threads == 3


def test_flash_attention_auto_on_off(demo):
    assert resolve_load_options(demo, LoadOptions(), SYSTEM).flash_attention is FlashAttention.AUTO
    on = resolve_load_options(demo, LoadOptions(flash_attention=True), SYSTEM, [AMPERE])
    assert on.flash_attention is FlashAttention.ENABLED
    off = resolve_load_options(demo, LoadOptions(flash_attention=False), SYSTEM, [AMPERE])
    assert off.flash_attention is FlashAttention.DISABLED


def test_flash_attention_off_when_any_gpu_lacks_it(demo):
    auto = resolve_load_options(demo, LoadOptions(), SYSTEM, [AMPERE, PASCAL])
    assert auto.flash_attention is FlashAttention.DISABLED
    forced = resolve_load_options(demo, LoadOptions(flash_attention=True), SYSTEM, [PASCAL])
    assert forced.flash_attention is FlashAttention.DISABLED
    assert any("not supported by gpu" in w for w in forced.warnings)


def test_quantized_cache_needs_flash_attention(demo):
    auto = resolve_load_options(demo, LoadOptions(kv_cache_type="q4_0"), SYSTEM)
    assert (auto.kv_cache_type, auto.flash_attention) == ("q4_0", FlashAttention.ENABLED)
    off = LoadOptions(kv_cache_type="q8_0", flash_attention=False)
    fallback = resolve_load_options(demo, off, SYSTEM)
    assert fallback.kv_cache_type == "f16"
    assert any("needs flash attention" in w for w in fallback.warnings)
    old_gpu = resolve_load_options(demo, LoadOptions(kv_cache_type="q8_0"), SYSTEM, [PASCAL])
    assert old_gpu.kv_cache_type == "f16"


def test_unknown_cache_type_falls_back_to_f16(demo):
    config = resolve_load_options(demo, LoadOptions(kv_cache_type="Q5_9"), SYSTEM)
    assert config.kv_cache_type == "f16"
    assert any("q5_9" in w for w in config.warnings)


def test_mmap_rules(demo):
    assert resolve_load_options(demo, LoadOptions(), SYSTEM).use_mmap is False  # CPU only
    assert resolve_load_options(demo, LoadOptions(), SYSTEM, [AMPERE]).use_mmap is True
    tight = SystemInfo(total_memory=GiB, free_memory=10 * MiB, free_swap=0, thread_count=2)
    assert resolve_load_options(demo, LoadOptions(), tight, [AMPERE]).use_mmap is False
    asked = LoadOptions(use_mmap=True)
    assert resolve_load_options(demo, asked, SYSTEM).use_mmap is True


def test_kv_size_is_context_times_parallel(demo):
    config = resolve_load_options(demo, LoadOptions(num_ctx=2048, parallel=4), SYSTEM)
    assert config.kv_size == 8192


# -- the one options table --------------------------------------------------------------------


def test_sampling_options_are_the_tables_sampling_options_with_its_defaults():
    sampling = {f.name: f.default for f in dataclasses.fields(SamplingOptions)}
    assert tuple(sorted(sampling)) == tuple(sorted(names(OptionKind.SAMPLING)))
    assert all(value == OPTIONS[name].default for name, value in sampling.items())
    assert SamplingOptions().temperature == 0.8 and SamplingOptions().top_k == 40


def test_load_options_come_from_the_table_and_the_environment():
    settings = Settings(context_length=2048, num_parallel=3)
    asked = load_options({"num_batch": 128.0, "use_mmap": False, "top_k": 5}, settings)
    assert asked.num_ctx == 2048 and asked.parallel == 3
    assert asked.num_batch == 128 and asked.use_mmap is False
    assert load_options({}, settings).num_batch == OPTIONS["num_batch"].default == 512
    assert set(names(OptionKind.LOAD)) <= {f.name for f in dataclasses.fields(LoadOptions)}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_ctx": "big"}, 'option "num_ctx" must be of type integer'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"stop": 5}, 'option "stop" must be of type array'),
    ],
)
def test_a_wrongly_typed_option_is_a_bad_request_with_ollamas_words(options, message):
    with pytest.raises(InvalidOption, match=message) as raised:
        load_options(options, Settings())
        validate_options(options)
    assert isinstance(raised.value, BadRequest)


def test_ignored_options_validate_and_do_nothing():
    assert OPTIONS["mirostat"].kind is OptionKind.IGNORED
    assert validate_options({"mirostat": 2}) == {"mirostat": 2}
    with pytest.raises(InvalidOption):
        validate_options({"mirostat": "two"})
    assert "mirostat" not in {f.name for f in dataclasses.fields(SamplingOptions)}
