"""A tiny vision projector for the demo model, written with the gguf package's writer.

No small real vision model ships with the project, so the tests build one: a CLIP
GGUF of the LLaVA kind (``clip.projector_type = mlp``) that mtmd loads and runs for
real: a 2-block ViT over 256×256 images in 64×64 patches (a class embedding, so 17
positions; the LLaVA graph reads the second-to-last block and drops the class
token), then ``mm.0`` → GELU → ``mm.2`` into the demo model's 576-wide embeddings.
Weights are random from a fixed seed: its answers mean nothing, but every image
takes the real path (decode, preprocess, encode, project, decode into the KV cache).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf_files import write_gguf

TEXT_EMBD = 576
"""SmolLM2-135M's embedding width: what the projector must produce."""
IMAGE_SIZE = 256
PATCH_SIZE = 64
# Few, large patches: 16 image tokens keep each test fast, and the compute buffer
# (mostly the raw image and its patches) is over 1 MiB, where llama.cpp's log, which
# gives two decimals of MiB, measures it to 0.5%: a 5% check of the estimate means
# something (at 64×64 pixels it would be 0.07 MiB, ±7% in the log alone).
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
"""Embeddings one image becomes: one per patch (the class token is dropped)."""
VISION_EMBD = 64
VISION_FF = 256
VISION_HEADS = 4
VISION_BLOCKS = 2


def projector_tensors(seed: int = 0, *, text_embd: int = TEXT_EMBD) -> dict[str, np.ndarray]:
    """The projector's weights, numpy shapes in the converter's (row-major) order."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    n_pos = IMAGE_TOKENS + 1
    tensors: dict[str, np.ndarray] = {
        "v.class_embd": normal(VISION_EMBD),
        "v.patch_embd.weight": normal(VISION_EMBD, 3, PATCH_SIZE, PATCH_SIZE).astype(np.float16),
        "v.position_embd.weight": normal(n_pos, VISION_EMBD),
        "v.pre_ln.weight": np.ones(VISION_EMBD, np.float32),
        "v.pre_ln.bias": np.zeros(VISION_EMBD, np.float32),
    }
    for block in range(VISION_BLOCKS):
        prefix = f"v.blk.{block}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{prefix}.{name}.weight"] = normal(VISION_EMBD, VISION_EMBD)
            tensors[f"{prefix}.{name}.bias"] = normal(VISION_EMBD)
        for norm in ("ln1", "ln2"):
            tensors[f"{prefix}.{norm}.weight"] = np.ones(VISION_EMBD, np.float32)
            tensors[f"{prefix}.{norm}.bias"] = np.zeros(VISION_EMBD, np.float32)
        tensors[f"{prefix}.ffn_up.weight"] = normal(VISION_FF, VISION_EMBD)
        tensors[f"{prefix}.ffn_up.bias"] = normal(VISION_FF)
        tensors[f"{prefix}.ffn_down.weight"] = normal(VISION_EMBD, VISION_FF)
        tensors[f"{prefix}.ffn_down.bias"] = normal(VISION_EMBD)
    # Large enough that what the image holds moves the text model's next tokens.
    tensors["mm.0.weight"] = normal(text_embd, VISION_EMBD, scale=0.5)
    tensors["mm.0.bias"] = normal(text_embd)
    tensors["mm.2.weight"] = normal(text_embd, text_embd, scale=0.2)
    tensors["mm.2.bias"] = normal(text_embd)
    return tensors


def write_projector(path: Path, seed: int = 0, *, text_embd: int = TEXT_EMBD) -> Path:
    """Write the projector GGUF to ``path`` and return it."""

    def kv(writer: gguf.GGUFWriter) -> None:
        writer.add_string("general.type", "mmproj")
        writer.add_name("pollama test projector")
        writer.add_bool("clip.has_vision_encoder", True)
        writer.add_string("clip.projector_type", "mlp")
        writer.add_bool("clip.use_gelu", True)
        writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
        writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
        writer.add_uint32("clip.vision.embedding_length", VISION_EMBD)
        writer.add_uint32("clip.vision.feed_forward_length", VISION_FF)
        writer.add_uint32("clip.vision.block_count", VISION_BLOCKS)
        writer.add_uint32("clip.vision.projection_dim", text_embd)
        writer.add_uint32("clip.vision.attention.head_count", VISION_HEADS)
        writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
        writer.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
        writer.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])

    return write_gguf(path, "clip", kv, projector_tensors(seed, text_embd=text_embd))
