"""Images as clients send them (base64), checked before anything loads.

An image must be PNG, JPEG or WebP, decode whole, and hold at most
``max_pixels`` pixels; a request carries at most ``max_images``. The size is read
from the header before a single pixel is decoded, so a decompression bomb (a
small file that inflates to gigapixels) is refused unread. Pillow decodes here,
at the edge, so a bad image is a 400 naming it, never a runner's failure; the
runner decodes the same bytes again into the RGB bitmap its projector reads.

Where the images go in a prompt is Ollama's rule (``place_images``): each
message's images come before its text, unless the text holds ``[img]``
placeholders, which they replace in order.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from pollama.errors import BadRequest

FORMATS = ("PNG", "JPEG", "WEBP")
PLACEHOLDER = "[img]"
"""Where a message's text wants its next image (Ollama's convention)."""


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 16
    max_pixels: int = 50_000_000


def image_bytes(data: str, number: int) -> bytes:
    """The bytes of the ``number``-th image (1-based), or a 400 if it is not base64."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {number} is not valid base64") from None


def check_images(images: Sequence[str], limits: ImageLimits) -> None:
    """Every image a request carries, checked against ``limits``; a 400 for the first bad one."""
    if len(images) > limits.max_images:
        raise BadRequest(
            f"too many images: {len(images)} (at most {limits.max_images}; "
            "POLLAMA_MAX_IMAGES sets the limit)"
        )
    for number, data in enumerate(images, start=1):
        check_image(image_bytes(data, number), number, limits.max_pixels)


def check_image(raw: bytes, number: int, max_pixels: int) -> tuple[int, int]:
    """The image's (width, height), once it has decoded whole; a 400 saying why not."""
    from PIL import Image, UnidentifiedImageError  # Pillow costs the server's start 20 ms

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=None) as image:
                kind = image.format or "unknown"
                if kind not in FORMATS:
                    raise BadRequest(
                        f"image {number} is {kind}: only PNG, JPEG and WebP images are supported"
                    )
                width, height = image.size
                _check_pixels(width, height, number, max_pixels)
                image.load()
    except UnidentifiedImageError:
        raise BadRequest(
            f"image {number} is not an image: only PNG, JPEG and WebP images are supported"
        ) from None
    except Image.DecompressionBombError:  # so large that Pillow will not even open it
        raise BadRequest(_too_many_pixels(number, "", max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"image {number} could not be decoded: {exc}") from None
    return width, height


def _check_pixels(width: int, height: int, number: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise BadRequest(_too_many_pixels(number, f" ({width}×{height} pixels)", max_pixels))


def _too_many_pixels(number: int, size: str, max_pixels: int) -> str:
    return (
        f"image {number} is too large{size}: more than the {max_pixels} pixels allowed "
        "(POLLAMA_MAX_IMAGE_PIXELS sets the limit)"
    )


def place_images(text: str, count: int, marker: str) -> str:
    """``text`` with ``count`` image markers where Ollama puts images: replacing ``[img]``
    placeholders in order, the rest before the text."""
    prefix = ""
    for _ in range(count):
        if PLACEHOLDER in text:
            text = text.replace(PLACEHOLDER, marker, 1)
        else:
            prefix += marker
    return prefix + text
