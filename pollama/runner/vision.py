"""Images in the runner: the vision projector (llama.cpp's mtmd), prompts with images,
and each image's evaluation into a slot's sequence.

mtmd cuts a prompt with one ``IMAGE_MARKER`` per image into text chunks and image
chunks. The engine keeps a prompt as a list of ints; an image chunk of ``n``
embeddings becomes ``n`` placeholder ids there, negative so that they never equal a
token, made from the hash of the image's bytes and the position inside the image
(``placeholder``). So the prefix cache compares images by content: a second turn
about the same image finds it in the slot's cache and does not encode it again, and
a different image shares nothing. A placeholder also says how far into its image it
lies, so a reused prefix is cut back to an image's start, never into it.

An image is evaluated on its own, between two decode steps (embeddings cannot
share a batch with tokens): the projector encodes it, and mtmd's helper decodes
the embeddings into the slot's sequence at its next positions (with the
non-causal attention some models need for them). Then the prompt's text goes on
through the continuous-batching step.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import io
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pollama.memory.types import ProjectorMemory
from pollama.options.load import LoadConfig
from pollama.protocol.wire import IMAGE_MARKER
from pollama.runner import llama
from pollama.runner.bindings import L, M
from pollama.runner.buffers import ProjectorBuffers
from pollama.runner.state import EngineError

_OFFSET_BITS = 20  # positions inside one image: far more than any projector makes
_KEY_BYTES = 5
_FLASH = {"auto": -1, "disabled": 0, "enabled": 1}
MAX_PIXELS = 50_000_000
"""Pixels an image may have here; the server checks its own (configurable) limit first."""


def placeholder(key: int, offset: int) -> int:
    """The id standing for position ``offset`` of the image whose hash gives ``key``."""
    return -1 - ((key << _OFFSET_BITS) | offset)


def offset_in_image(token: int) -> int:
    """How far into its image a placeholder lies (0 at an image's first position)."""
    return (-1 - token) & ((1 << _OFFSET_BITS) - 1)


def is_image(token: int) -> bool:
    return token < 0


@dataclass(eq=False)
class ImageChunk:
    """One image of a prompt, tokenized by mtmd: it owns a copy of mtmd's chunk."""

    handle: Any
    n_tokens: int

    def __post_init__(self) -> None:
        weakref.finalize(self, M.mtmd_input_chunk_free, self.handle)


@dataclass(frozen=True)
class Bitmap:
    """An image decoded to RGB, and the hash of the bytes it came from."""

    width: int
    height: int
    rgb: bytes
    digest: bytes


def decode_image(data: str, number: int) -> Bitmap:
    """A base64 PNG/JPEG/WebP as RGB pixels (the server checked it; this is the guard)."""
    from PIL import Image  # only a model with a projector needs Pillow: not every start

    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise EngineError(f"image {number} has too many pixels", status=400)
            rgb = image.convert("RGB")
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise EngineError(f"image {number} could not be decoded: {exc}", status=400) from None
    return Bitmap(rgb.width, rgb.height, rgb.tobytes(), hashlib.sha256(raw).digest())


class Vision:
    """A loaded projector; every method runs on the engine thread."""

    def __init__(self, ctx: Any, memory: ProjectorMemory) -> None:
        self._ctx = ctx
        self.memory = memory
        """What mtmd allocated for it, as it logged it."""

    @classmethod
    def open(
        cls,
        path: str,
        model: Any,
        config: LoadConfig,
        log: llama.LlamaLog,
        buffers: ProjectorBuffers,
    ) -> Vision:
        """Load the projector for ``model``; its buffer sizes are read from mtmd's log."""
        M.mtmd_helper_log_set(log.callback, ctypes.c_void_p(0))
        params = M.mtmd_context_params_default()
        params.use_gpu = False  # the memory model keeps the projector in system memory
        params.n_threads = config.num_threads
        params.print_timings = False
        params.warmup = True  # reserves the compute buffer now, so it is measured
        params.flash_attn_type = _FLASH.get(config.flash_attention.value, -1)
        params.media_marker = IMAGE_MARKER.encode()
        log.begin()
        log.collector = buffers
        try:
            ctx = M.mtmd_init_from_file(path.encode(), model, params)
        finally:
            log.collector = None
        if not ctx:
            raise EngineError(log.explain("unable to load the vision projector"))
        if not M.mtmd_support_vision(ctx):
            M.mtmd_free(ctx)
            raise EngineError(f"the projector {path} reads no images")
        graph = sum(buffers.graph.values())
        return cls(ctx, ProjectorMemory(buffers.weights, graph, buffers.device))

    def free(self) -> None:
        if self._ctx:
            M.mtmd_free(self._ctx)
            self._ctx = None

    def tokenize(
        self, prompt: str, images: Sequence[str]
    ) -> tuple[list[int], dict[int, ImageChunk]]:
        """The prompt as tokens and placeholders, and each image's chunk by its first
        placeholder. EngineError (400) for an image that does not decode, or markers
        that do not match the images."""
        bitmaps = [decode_image(data, n) for n, data in enumerate(images, start=1)]
        handles = [M.mtmd_bitmap_init(b.width, b.height, _pixels(b.rgb)) for b in bitmaps]
        chunks = M.mtmd_input_chunks_init()
        try:
            for handle, bitmap in zip(handles, bitmaps, strict=True):
                M.mtmd_bitmap_set_id(handle, bitmap.digest.hex().encode())
            data = prompt.encode("utf-8")
            text = M.mtmd_input_text(data, len(data), True, True)
            array = (M.mtmd_bitmap_p_ctypes * len(handles))(*handles)
            status = M.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), array, len(handles))
            if status == 1:
                markers = prompt.count(IMAGE_MARKER)
                raise EngineError(
                    f"the prompt has {markers} image markers for {len(images)} images", status=400
                )
            if status != 0:
                raise EngineError(f"the projector could not prepare the images (status {status})")
            return _flatten(chunks)
        finally:
            M.mtmd_input_chunks_free(chunks)
            for handle in handles:
                M.mtmd_bitmap_free(handle)

    def evaluate(self, ctx: Any, image: ImageChunk, seq: int, position: int, n_batch: int) -> None:
        """Encode the image and decode its embeddings into ``seq`` from ``position`` on."""
        after = L.llama_pos(0)
        status = M.mtmd_helper_eval_chunk_single(
            self._ctx, ctx, image.handle, position, seq, n_batch, False, ctypes.byref(after)
        )
        if status != 0:
            raise EngineError(f"the projector could not evaluate an image (status {status})")


def _pixels(rgb: bytes) -> Any:
    return (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)


def _flatten(chunks: Any) -> tuple[list[int], dict[int, ImageChunk]]:
    """mtmd's chunks as one list of tokens and image placeholders. Some projectors cut an
    image into several chunks (tiles) under the image's one id, so a chunk's key hashes
    the id (the image's hash) and the chunk's place among that image's chunks."""
    tokens: list[int] = []
    images: dict[int, ImageChunk] = {}
    parts: Counter[bytes] = Counter()
    for i in range(M.mtmd_input_chunks_size(chunks)):
        chunk = M.mtmd_input_chunks_get(chunks, i)
        kind = M.mtmd_input_chunk_get_type(chunk)
        if kind == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
            count = ctypes.c_size_t(0)
            pointer = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
            tokens.extend(pointer[: count.value])
            continue
        if kind != M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            raise EngineError("the prompt holds media other than images", status=400)
        n_tokens = int(M.mtmd_input_chunk_get_n_tokens(chunk))
        if int(M.mtmd_input_chunk_get_n_pos(chunk)) != n_tokens:
            raise EngineError(
                "this projector places images by M-RoPE positions, which pollama does not "
                "support yet",
                status=400,
            )
        ident = M.mtmd_input_chunk_get_id(chunk) or b""
        part = parts[ident]
        parts[ident] += 1
        digest = hashlib.sha256(ident + part.to_bytes(4, "big")).digest()
        key = int.from_bytes(digest[:_KEY_BYTES], "big")
        first = placeholder(key, 0)
        if first not in images:
            images[first] = ImageChunk(M.mtmd_input_chunk_copy(chunk), n_tokens)
        tokens.extend(placeholder(key, offset) for offset in range(n_tokens))
    return tokens, images
