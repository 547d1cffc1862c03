"""Images on the request path: refused or checked before anything loads.

A model without a vision projector given images is a 400 naming it; otherwise every
image is decoded and checked (``pollama.chat.images``) off the event loop, against
the server's limits. ``image_tokens`` is what one image costs in the context, for
chat truncation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from pollama.api.state import ServerState, header
from pollama.chat.images import ImageLimits, check_images
from pollama.errors import BadRequest
from pollama.memory.projector import image_tokens
from pollama.scheduler.loaded import ModelSpec

UNKNOWN_IMAGE_TOKENS = 768
"""An image's cost in the context when the projector's geometry does not say (Ollama's
figure for CLIP)."""


def message_images(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    return [image for message in messages for image in message.get("images") or ()]


async def admit_images(state: ServerState, spec: ModelSpec, images: Sequence[str]) -> None:
    """A 400 for images the model cannot see or that break a limit; nothing for none."""
    if not images:
        return
    if not spec.projector:
        raise BadRequest(f'"{spec.name}" does not support images: it has no vision projector')
    limits = ImageLimits(state.settings.max_images, state.settings.max_image_pixels)
    await asyncio.to_thread(check_images, images, limits)


def tokens_per_image(spec: ModelSpec) -> int:
    """Context tokens one image takes with this model's projector."""
    if not spec.projector:
        return 0
    return image_tokens(header(spec.projector)) or UNKNOWN_IMAGE_TOKENS
