"""Request -> model tensors without fastai or torch (numpy + PIL only).

Each function reproduces a fastai pipeline step for step; tests/services/test_preprocessing.py
ties every one of them to fastai's own on real inputs (the parity tests).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.bundle import ImageSpec, SegmentationSpec

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000


class InputError(ValueError):
    """A request field that cannot be turned into model input; becomes a 4xx naming the field."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict:
        return {"error": f"{self.field}: {self.message}", "field": self.field}


# --- images -----------------------------------------------------------------------------------


def decode_base64(data: str, field: str) -> bytes:
    if "," in data[:100] and data.startswith("data:"):
        data = data.split(",", 1)[1]  # data URLs
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "is not valid base64") from None


def decode_image(data: bytes, field: str = "image") -> Image.Image:
    """Encoded image file -> RGB PIL image, as fastai's PILImage.create does (no EXIF rotation)."""
    if not data:
        raise InputError(field, "is empty; send an encoded image file (JPEG, PNG, ...)")
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(field, f"is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}", status=413)
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise InputError(field, f"is {img.width}x{img.height}; too many pixels", status=413)
        img.load()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError(field, "is not a readable image (JPEG, PNG, GIF, BMP, WebP, TIFF ...)") from None
    return img.convert("RGB")


def _to_chw(img: Image.Image, mean: list[float] | None, std: list[float] | None) -> np.ndarray:
    # ToTensor (HWC uint8 -> CHW) then IntToFloatTensor (/255) then Normalize, as fastai does.
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    if mean is not None and std is not None:
        m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        x = (x - m) / s
    return np.ascontiguousarray(x, dtype=np.float32)


def resize_squish(img: Image.Image, width: int, height: int) -> Image.Image:
    """fastai Resize(method='squish'): the whole image, aspect ratio ignored, bilinear."""
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.BILINEAR)


def image_tensor(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """RGB image -> float32 [3, H, W] exactly as the learner's validation pipeline makes it."""
    if spec.resize_method != "squish":
        raise NotImplementedError(f"resize method {spec.resize_method!r} is not served yet")
    return _to_chw(resize_squish(img, spec.width, spec.height), spec.mean, spec.std)


def segmentation_tensor(img: Image.Image, spec: SegmentationSpec) -> np.ndarray:
    """RGB image -> float32 [3, H, W] at the training size (the model batches one size)."""
    return _to_chw(resize_squish(img, spec.width, spec.height), spec.mean, spec.std)


def mask_to_size(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Class-index mask back to the request's size, nearest neighbour (labels never blend)."""
    if mask.shape == (height, width):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8), mode="L").resize((width, height), Image.NEAREST)
    return np.asarray(resized, dtype=np.uint8)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
