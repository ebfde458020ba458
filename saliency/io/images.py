"""Decode an image for a model, refusing decompression bombs before decoding them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from saliency.io.errors import InputProblem

__all__ = ["read_image"]

# Decoders tried on an image; PIL's others include ones that hand the file to external programs.
_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def read_image(path: Path, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """Decode, convert and resize an image; return uint8 ``[H, W, C]``."""
    Image.init()
    formats = [f for f in _IMAGE_FORMATS if f in Image.OPEN]
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; the size check below refuses those too.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=formats)
    except Image.DecompressionBombError as e:
        raise InputProblem(f"refused without decoding: {e}") from None
    except Image.UnidentifiedImageError:
        raise InputProblem(
            "is not a readable image (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM) or tensor file "
            "(.npy, .safetensors)"
        ) from None
    with img:
        width, height = img.size
        if limit is not None and width * height > limit:
            raise InputProblem(
                f"refused without decoding: {width}x{height} = {width * height} pixels is over "
                f"PIL's decompression-bomb limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS); raise "
                "that limit if you trust this image"
            )
        # Photos store their orientation apart from the pixels; show what a viewer shows.
        img = ImageOps.exif_transpose(img)
        gray = img.mode in _GRAY_MODES
        if img.mode == "P":  # through RGBA, as PIL asks for palettes with transparency
            img = img.convert("RGBA")
        if img.mode.startswith("I;16"):
            img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
        elif img.mode in ("I", "F"):
            values = np.asarray(img)
            if values.size and (values.min() < 0 or values.max() > 255):
                raise InputProblem(
                    f"is a {img.mode}-mode image with values in [{values.min()}, "
                    f"{values.max()}]; expected 8- or 16-bit pixels (save it as .npy instead)"
                )
        img = img.convert("L" if (channels == 1 or (channels is None and gray)) else "RGB")
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = np.array(img, dtype=np.uint8)  # a writable copy the caller owns
    return pixels[:, :, None] if pixels.ndim == 2 else pixels
