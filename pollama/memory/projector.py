"""A vision projector's memory, from its GGUF header (pure).

- Weights: the exact byte size of its tensors, as llama.cpp's mtmd reads them all
  into one buffer.
- Compute buffer: mtmd reserves it for one image at the projector's own size (its
  warm-up image); ggml's allocator frees each tensor after its last use, so the
  buffer is the largest of the graph's phases: the raw image with its patches
  (im2col, F16); a block's attention (the residual, Q, K, V and either the
  scores or flash attention's F16 copies and output); a block's FFN; the
  projector's two matrix products over the patches. Calibrated against
  llama.cpp's logged compute buffer for 11 LLaVA-style (``mlp``) geometries, with
  and without flash attention (``scripts/projector_memory.py``): 9 of the 22
  within 0.5%, none more than 4.4% under, the others over, by up to 30% (ggml's
  allocator often fits the FFN's intermediate lower than the four hiddens assumed
  here; over is the safe side for placement). Buffers under ~0.5 MiB are logged
  too coarsely to say better than a few percent. Other projector types add their
  own steps (merges, resamplers) and may need more.

``image_tokens`` is what one image becomes in the text model's context for
projectors that resize every image to one size.
"""

from __future__ import annotations

from pollama.ggufmeta import GGUFModel
from pollama.memory.types import ProjectorMemory

_F32 = 4
_F16 = 2
# Projectors that resize every image to image_size and give one embedding per patch.
_ONE_PER_PATCH = frozenset({"mlp", "mlp_norm"})


def projector_memory(projector: GGUFModel, *, flash_attention: bool) -> ProjectorMemory:
    """The projector's weights and compute buffer, in system memory."""
    weights = sum(t.n_bytes for t in projector.tensors)
    return ProjectorMemory(weights=weights, graph=graph_size(projector, flash=flash_attention))


def _vision(projector: GGUFModel, key: str, default: int = 0) -> int:
    value = projector.get(f"clip.vision.{key}", default)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def graph_size(projector: GGUFModel, *, flash: bool) -> int:
    """Estimated compute buffer of one image's encoding (see the module docstring)."""
    image = _vision(projector, "image_size")
    patch = max(1, _vision(projector, "patch_size", 1))
    embd = _vision(projector, "embedding_length")
    ff = _vision(projector, "feed_forward_length")
    heads = max(1, _vision(projector, "attention.head_count", 1))
    out = _vision(projector, "projection_dim")
    patches = (image // patch) ** 2
    positions = patches + 1  # a class token, for most
    hidden = _F32 * positions * embd
    embed = _F32 * 3 * image * image + _F16 * patches * 3 * patch * patch
    if flash:  # K and V cast to F16 (one hidden between them), and the output
        attention = 6 * hidden
    else:
        attention = 5 * hidden + _F32 * positions * positions * heads
    # The FFN's intermediate is placed above what is alive then (up to ~4 hiddens).
    ffn = 4 * hidden + _F32 * positions * ff
    projection = 2 * _F32 * patches * (embd + out)
    return max(embed, attention, ffn, projection)


def image_tokens(projector: GGUFModel) -> int:
    """Context tokens one image becomes, when the projector's geometry fixes it; 0 when it
    depends on the image (tiles, dynamic resolution) or the type is not known here."""
    kind = str(projector.get("clip.projector_type") or projector.get("clip.vision.projector_type"))
    image = _vision(projector, "image_size")
    patch = _vision(projector, "patch_size")
    if kind not in _ONE_PER_PATCH or not image or not patch:
        return 0
    if projector.get("clip.vision.image_grid_pinpoints") is not None:
        return 0  # LLaVA-1.6 tiles: more tokens for larger images
    return (image // patch) ** 2
