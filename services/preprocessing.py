"""Request -> model tensors without fastai or torch (numpy + PIL only).

Each function reproduces a fastai pipeline step for step; tests/services/test_preprocessing.py
ties every one of them to fastai's own on real inputs (the parity tests).

Images stop at uint8 pixels: decode -> RGB -> squish resize -> uint8 [H, W, 3]. The image models'
graphs (bundle format 2) take those and do fastai's IntToFloatTensor (/255), Normalize and the
HWC -> CHW transpose themselves, so no float math per pixel happens here.

Large JPEGs are decoded at reduced scale (PIL's draft mode: the decoder's own 1/2, 1/4, 1/8 IDCT
scaling) to no less than DRAFT_MARGIN times the model's input size, then resized as usual;
tests/services/test_large_photos.py measures label agreement with the full decode on phone-size
photos (>= 99.5 % required).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.bundle import ImageSpec, SegmentationSpec
from services.errors import InvalidInput

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # per image, from its header (before any decoding, draft or not)
# Draft decoding keeps at least this many times the model's input size in each dimension before the
# bilinear resize; measured agreement with the full decode is in tests/services/test_large_photos.py
# (bird: 2; segment, whose every pixel counts, 8: services/segment.py).
DRAFT_MARGIN = 2


# A request field that cannot be turned into model input: 400 by default (unreadable), 422 where a
# field is invalid, 413 where it is too large; the answer names the field.
InputError = InvalidInput


# --- images -----------------------------------------------------------------------------------


def decode_base64(data: str, field: str) -> bytes:
    if "," in data[:100] and data.startswith("data:"):
        data = data.split(",", 1)[1]  # data URLs
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "is not valid base64") from None


class PixelBudget:
    """The decoded pixels one request may still spend (its images together), checked from each
    image's header before the image is decoded."""

    def __init__(self, limit: int):
        self.limit = self.left = limit

    def spend(self, field: str, width: int, height: int) -> None:
        if width * height > self.left:
            raise InputError(
                field, f"is {width}x{height}: the request's images pass its limit of {self.limit:,} decoded pixels", status=413
            )
        self.left -= width * height


def draft_size(spec, margin: int = DRAFT_MARGIN) -> tuple[int, int]:
    """The smallest decode a JPEG may be drafted to for ``spec``'s input size (width, height)."""
    return spec.width * margin, spec.height * margin


def decode_image(
    data: bytes, field: str = "image", budget: PixelBudget | None = None, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Encoded image file -> RGB PIL image, as fastai's PILImage.create does (no EXIF rotation).

    ``draft`` (width, height): a JPEG at least twice that size in both dimensions is decoded at the
    largest 1/2, 1/4 or 1/8 scale that stays at or above it (PIL's draft mode); other images are
    decoded whole. ``img.info["original_size"]`` is the file's own size either way. The per-image
    limit reads the header; the request's ``budget`` is spent on the pixels actually decoded."""
    if not data:
        raise InputError(field, "is empty; send an encoded image file (JPEG, PNG, ...)")
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(field, f"is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}", status=413)
    too_many = f"has too many pixels (the limit is {MAX_IMAGE_PIXELS:,} per image)"
    try:
        img = Image.open(io.BytesIO(data))
        original = img.size
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise InputError(field, f"is {img.width}x{img.height}: {too_many}", status=413)
        if draft is not None and img.format == "JPEG" and img.width >= 2 * draft[0] and img.height >= 2 * draft[1]:
            img.draft("RGB", draft)  # picks the smallest scale whose size is still >= draft
        if budget is not None:
            budget.spend(field, img.width, img.height)
        img.load()
    except InputError:
        raise
    except Image.DecompressionBombError:  # past Pillow's own limit, found while opening
        raise InputError(field, too_many, status=413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(field, "is not a readable image (JPEG, PNG, GIF, BMP, WebP, TIFF ...)") from None
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    rgb.info["original_size"] = original
    return rgb


def to_float_nchw(pixels: np.ndarray, mean: list[float] | None, std: list[float] | None) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] as fastai makes it: ToTensor (HWC -> CHW), then
    IntToFloatTensor (/255), then Normalize. What the image graphs do inside; here for the fastai
    runtime and the tests, never on the ONNX serving path."""
    x = np.asarray(pixels, dtype=np.uint8).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    if mean is not None and std is not None:
        m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
        x = (x - m) / s
    return np.ascontiguousarray(x, dtype=np.float32)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def resize_squish(img: Image.Image, width: int, height: int) -> Image.Image:
    """fastai Resize(method='squish'): the whole image, aspect ratio ignored, bilinear."""
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.BILINEAR)


def image_pixels(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """RGB image -> uint8 [H, W, 3], resized as the learner's validation pipeline resizes it: the
    input of the bundle's graph (which then does /255 and Normalize as fastai does)."""
    if spec.resize_method != "squish":
        raise NotImplementedError(f"resize method {spec.resize_method!r} is not served yet")
    return _pixels(resize_squish(img, spec.width, spec.height))


def segmentation_pixels(img: Image.Image, spec: SegmentationSpec) -> np.ndarray:
    """RGB image -> uint8 [H, W, 3] at the training size (the model batches one size)."""
    return _pixels(resize_squish(img, spec.width, spec.height))


def image_tensor(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """RGB image -> float32 [3, H, W] exactly as fastai's validation pipeline makes it (parity tests)."""
    return to_float_nchw(image_pixels(img, spec)[None], spec.mean, spec.std)[0]


def segmentation_tensor(img: Image.Image, spec: SegmentationSpec) -> np.ndarray:
    """RGB image -> float32 [3, H, W] at the training size, as fastai makes it (parity tests)."""
    return to_float_nchw(segmentation_pixels(img, spec)[None], spec.mean, spec.std)[0]


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


# --- tabular (ADULT) and collaborative filtering -------------------------------------------------
# numpy only; tests/services/test_tabular.py and test_collab.py tie them to fastai on real rows.

from services.bundle import CollabSpec, TabularSpec  # noqa: E402


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


class TabularEncoder:
    """fastai's TabularPandas procs for one TabularSpec, as `learn.dls.test_dl` applies them:

    - FillMissing: a missing continuous value becomes the training median and sets `<col>_na`
      (a categorical column: '#na#', 'False', 'True'); a continuous column that had no missing
      value in training has no median, and fastai refuses such rows (an assertion) - so do we (422).
    - Categorify: each categorical value is looked up in the training classes; missing, empty and
      unknown values become index 0 ('#na#'). Leading spaces are stripped first, as
      `TabularDataLoaders.from_csv` (pandas `skipinitialspace=True`) strips them from adult.csv.
    - Normalize: (x - mean) / std with fastai's training means and stds (std has +1e-7 already).

    Output: float32 [N, n_cat + n_cont], categorical indices first (exact in float32), in the
    model's column order; `services.model.model_feeds` splits it into x_cat (int64) and x_cont.
    """

    def __init__(self, spec: TabularSpec):
        self.spec = spec
        self.cat_names = list(spec.cat_names)
        self.cont_names = list(spec.cont_names)
        self.index = {name: {v: i for i, v in enumerate(classes) if i > 0} for name, classes in spec.categories.items()}
        # `<col>_na` columns are FillMissing's, computed from the continuous column `col`
        self.indicators = {f"{c}_na": c for c in spec.fill_values if f"{c}_na" in spec.cat_names}
        self.fill = {c: np.float32(v) for c, v in spec.fill_values.items()}
        self.means = np.array([spec.means[c] for c in self.cont_names], dtype=np.float64)
        self.stds = np.array([spec.stds[c] for c in self.cont_names], dtype=np.float64)
        self.width = len(self.cat_names) + len(self.cont_names)

    @property
    def input_names(self) -> list[str]:
        """Raw columns a request may carry (the `_na` columns are derived, never sent)."""
        return [c for c in self.cat_names if c not in self.indicators] + self.cont_names

    @staticmethod
    def category(value) -> str | None:
        """A raw categorical value as the CSV reader would leave it; None for missing."""
        if _is_missing(value):
            return None
        text = str(value).lstrip(" ")
        return text or None  # an empty CSV field is NaN in pandas

    def _field(self, name: str, row: int, n: int, where: str) -> str:
        return name if n == 1 else f"{where}[{row}].{name}"

    def rows(self, records, where: str = "rows") -> np.ndarray:
        """records: mappings from column name (as in the CSV, e.g. 'education-num') to a raw value."""
        n = len(records)
        conts = np.empty((n, len(self.cont_names)), dtype=np.float32)
        out = np.zeros((n, self.width), dtype=np.float32)
        for r, record in enumerate(records):
            missing: dict[str, bool] = {}
            for j, name in enumerate(self.cont_names):
                value = record.get(name)
                if _is_missing(value):
                    if name not in self.fill:
                        raise InputError(
                            self._field(name, r, n, where),
                            "is required: the training data had no missing values in this column, so the model has no fill value for it",
                            status=422,
                        )
                    conts[r, j] = self.fill[name]
                    missing[name] = True
                    continue
                try:
                    x = float(value)
                except (TypeError, ValueError):
                    raise InputError(self._field(name, r, n, where), f"must be a number, got {value!r}", status=422) from None
                if x != x or x in (float("inf"), float("-inf")):
                    raise InputError(self._field(name, r, n, where), "must be a finite number", status=422)
                with np.errstate(over="ignore"):
                    conts[r, j] = x  # fastai holds continuous columns as float32 (inf if too large: see below)
                missing[name] = False
            for j, name in enumerate(self.cat_names):
                if name in self.indicators:
                    out[r, j] = self.index[name].get(str(missing[self.indicators[name]]), 0)
                else:
                    value = self.category(record.get(name))
                    out[r, j] = 0 if value is None else self.index[name].get(value, 0)
        normalized = ((conts.astype(np.float64) - self.means) / self.stds).astype(np.float32)
        if not np.isfinite(normalized).all():  # e.g. 1e308: finite in JSON, infinite in float32
            r, j = np.argwhere(~np.isfinite(normalized))[0]
            name = self.cont_names[j]
            raise InputError(self._field(name, r, n, where), f"{records[r].get(name)!r} is too large for the model", status=422)
        out[:, len(self.cat_names):] = normalized
        return out


class CollabIndex:
    """CollabDataLoaders' Categorify for users and items: id -> embedding index, 0 ('#na#') for an
    id the model never saw, exactly as fastai maps it. Ids are matched by their text, so 73 and "73"
    are the same user. Never feeds an index outside the embedding tables to the network."""

    def __init__(self, spec: CollabSpec):
        self.spec = spec
        self.users = {u: i for i, u in enumerate(spec.users) if i > 0}
        self.items = {m: i for i, m in enumerate(spec.items) if i > 0}
        self.seen = [set(s) for s in spec.seen] if spec.seen else []
        self.low, self.high = float(spec.y_range[0]), float(spec.y_range[1])

    @staticmethod
    def key(value) -> str:
        return str(value)

    def user(self, value) -> int:
        return self.users.get(self.key(value), 0)

    def item(self, value) -> int:
        return self.items.get(self.key(value), 0)

    def rows(self, pairs) -> np.ndarray:
        """(user, item) pairs -> int64 [N, 2] embedding indices."""
        out = np.zeros((len(pairs), 2), dtype=np.int64)
        for r, (user, item) in enumerate(pairs):
            out[r, 0] = self.user(user)
            out[r, 1] = self.item(item)
        return out

    def unseen(self, user_index: int) -> np.ndarray:
        """Item indices the user has not rated in the training ratings (candidates to recommend)."""
        seen = self.seen[user_index] if user_index < len(self.seen) else set()
        return np.array([i for i in range(1, len(self.spec.items)) if i not in seen], dtype=np.int64)
