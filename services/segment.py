"""Lesson 1's CamVid segmentation U-Net as a BentoML service.

    bentoml serve services.segment:Segment      # or: make serve-segment

POST /predict        multipart: file field `image`, optional field `format` (also `?format=`)
POST /predict_batch  JSON {"images": [<base64 image>, ...], "format": "png" | "raw"}

Every image is resized (squish, bilinear) to the training size in preprocess.json (96x128 for
CamVid-tiny), as the model was trained at one size and requests batch together; the class-index
mask is resized back to the request's own width x height (nearest neighbour) before anything is
returned. The answer, per image:

- `width`, `height`: the request's size, which is the mask's size
- `classes`: the class names; a mask value `i` means `classes[i]`
- `mask_png_base64`: the mask as a palette PNG; its pixel values are class indices (the palette only
  makes it viewable)
- `class_fractions`: share of the image's pixels per class (all classes; they sum to 1)
- `mask` (only with `format=raw`): the same class indices as rows of ints

Open Inference Protocol (docs/oip.md): `image` BYTES [N] (all of one size) or `pixels` UINT8
[N,H,W,3] -> `mask` UINT8 [N,h,w], `class_fractions` FP32 [N,C], as SegmentModel declares below.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import bentoml
import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, PrivateAttr, model_serializer

from services import metrics
from services.model import ModelService, Preprocessed, roost_service, RoostModel
from services.oip.codec import Tensor, TensorError
from services.oip.tensors import OipModel, TensorSpec, check_pixels, elements, image_inputs, image_or_pixels
from services.preprocessing import (
    InputError, PixelBudget, decode_base64, decode_image, draft_size, mask_to_size, segmentation_pixels,
)
from services.registry import MODELS
from services.upload import UploadedFile

MAX_BATCH_ITEMS = MODELS["segment"].max_request_rows
FORMATS = ("png", "raw")
# Phone photos are decoded at reduced scale to at least this many times the training size (JPEG draft
# mode). Mask pixels that agree with the full decode's, 4000x3000 photos made from 12 CamVid images:
# margin 2 (1/8 scale) 99.12 %, 4 (1/4) 99.38 %, 8 (1/2) 99.54 %; the fast path needs >= 99.5 %.
DRAFT_MARGIN = 8
MAX_RAW_MASK_PIXELS = 1_000_000  # format=raw answers JSON rows of ints (~3 bytes a pixel), serialized on the event loop


class SegmentPrediction(BaseModel):
    width: int = Field(ge=1, description="width of the request image and of the mask")
    height: int = Field(ge=1, description="height of the request image and of the mask")
    classes: list[str] = Field(description="class names; mask value i means classes[i]")
    mask_png_base64: str = Field(description="base64 palette PNG, width x height; pixel values are class indices")
    class_fractions: dict[str, float] = Field(description="share of pixels per class (sums to 1)")
    model_version: str
    mask: list[list[int]] | None = Field(
        default=None, description="only with format=raw: class index per pixel, `height` rows of `width`"
    )
    _array: np.ndarray | None = PrivateAttr(default=None)

    @model_serializer(mode="wrap")
    def _omit_absent_mask(self, handler):
        data = handler(self)
        if data.get("mask") is None:
            data.pop("mask", None)
        return data

    @property
    def mask_array(self) -> np.ndarray:
        """The class-index mask, uint8 [height, width] (for other protocols; never serialized)."""
        return self._array

    def with_raw_mask(self) -> "SegmentPrediction":
        raw = self.model_copy(update={"mask": self._array.tolist()})
        raw._array = self._array
        return raw


class Images(list):
    """A request's images; preprocess notes each one's (width, height) so postprocess needn't decode again."""

    sizes: list[tuple[int, int]] | None = None


def palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map: distinct colours for small class indices, index 0 black."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours += [r, g, b]
    return colours


PALETTE = palette()


def mask_png(mask: np.ndarray) -> bytes:
    """uint8 class-index mask -> palette PNG whose pixel values are the indices."""
    height, width = mask.shape
    img = Image.frombytes("P", (width, height), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    img.putpalette(PALETTE)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def decode_mask_png(data: bytes | str) -> np.ndarray:
    """Inverse of mask_png (clients and tests): the class indices, uint8 [H, W]."""
    if isinstance(data, str):
        data = base64.b64decode(data)
    img = Image.open(io.BytesIO(data))
    if img.mode != "P":
        raise ValueError(f"mask PNG has mode {img.mode}, expected P")
    return np.asarray(img, dtype=np.uint8)


def raw_masks(results: list[SegmentPrediction]) -> list[SegmentPrediction]:
    """The results with their masks as rows of ints (format=raw), within MAX_RAW_MASK_PIXELS."""
    pixels = sum(r.width * r.height for r in results)
    if pixels > MAX_RAW_MASK_PIXELS:
        raise InputError(
            "format", f"'raw' answers at most {MAX_RAW_MASK_PIXELS:,} mask pixels per request (this one has {pixels:,}); "
            "use format=png, whose mask holds the same class indices", status=413,
        )
    return [r.with_raw_mask() for r in results]


def check_format(value: str | None) -> str:
    value = (value or "png").strip().lower()
    if value not in FORMATS:
        raise InputError("format", f"must be 'png' or 'raw', not {value!r}", status=422)
    return value


def _image_size(item: Any) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header, or None (preprocess reports bad images)."""
    try:
        if isinstance(item, str):
            item = base64.b64decode(item.split(",", 1)[1] if item.startswith("data:") else item, validate=True)
        with Image.open(io.BytesIO(item)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - undecodable: the model's own check answers with the field
        return None


class SegmentModel(RoostModel, OipModel):
    name = "segment"
    spec_kind = "segmentation"
    oip_max_rows = MAX_BATCH_ITEMS  # as /predict_batch

    async def __call__(self, request: Any, protocol: str = "http") -> list[SegmentPrediction]:
        """`request`: a list of encoded images (bytes) or base64 strings -> one prediction each."""
        if isinstance(request, (list, tuple)) and not isinstance(request, Images) and not hasattr(request, "sizes"):
            request = Images(request)
        return await super().__call__(request, protocol)

    def preprocess(self, images: list[bytes | str]) -> np.ndarray:
        """Images -> uint8 [N, H, W, 3] at the training size (spec.height x spec.width); large JPEGs
        are decoded at reduced scale, the mask still comes back at the file's own size."""
        if len(images) == 0:
            raise InputError("images", "is empty; send at least one image")
        rows, sizes, budget = [], [], PixelBudget(self.settings.max_request_pixels)
        draft = draft_size(self.spec, DRAFT_MARGIN)
        for i, item in enumerate(images):
            field = "image" if len(images) == 1 and isinstance(item, bytes) else f"images[{i}]"
            data = decode_base64(item, field) if isinstance(item, str) else item
            img = decode_image(data, field, budget, draft)
            sizes.append(img.info.get("original_size", img.size))
            rows.append(segmentation_pixels(img, self.spec))
        if isinstance(images, Images):
            images.sizes = sizes
        return np.stack(rows)

    @staticmethod
    def _sizes(images) -> list[tuple[int, int]]:
        sizes = getattr(images, "sizes", None)
        if sizes is not None:
            return sizes
        out = []  # preprocess ran on a plain list: read each size from its header (no decoding)
        for item in images:
            data = base64.b64decode(item.split(",", 1)[1] if item.startswith("data:") else item) if isinstance(item, str) else item
            out.append(Image.open(io.BytesIO(data)).size)
        return out

    def postprocess(self, logits: np.ndarray, images) -> list[SegmentPrediction]:
        codes = list(self.spec.codes)
        masks = logits.argmax(axis=1).astype(np.uint8)  # [N, H, W] at the model's size
        results = []
        for mask, (width, height) in zip(masks, self._sizes(images)):
            full = mask_to_size(mask, width, height)
            counts = np.bincount(full.ravel(), minlength=len(codes))
            fractions = counts / full.size
            metrics.PREDICTIONS.labels(self.name, codes[int(counts.argmax())]).inc()  # label: the dominant class
            prediction = SegmentPrediction(
                width=width,
                height=height,
                classes=codes,
                mask_png_base64=base64.b64encode(mask_png(full)).decode("ascii"),
                class_fractions={code: float(f) for code, f in zip(codes, fractions)},
                model_version=self.version,
            )
            prediction._array = full
            results.append(prediction)
        return results

    # -- Open Inference Protocol: `image` BYTES [N] (encoded files; base64 strings in JSON; all of one
    # size) or `pixels` UINT8 [N,H,W,3] at the training size -> `mask` UINT8 [N,h,w] class indices at
    # the images' own size (the training size for pixels), `class_fractions` FP32 [N,C].
    def oip_inputs(self) -> list[TensorSpec]:
        return image_inputs(self.spec, "encoded image files of one size, one per row; base64 strings in JSON")

    def oip_outputs(self) -> list[TensorSpec]:
        codes = list(self.spec.codes)
        return [
            TensorSpec("mask", "UINT8", (-1, -1, -1), doc=f"class index per pixel, [N, height, width]; classes {codes}"),
            TensorSpec("class_fractions", "FP32", (-1, len(codes)), doc="share of pixels per class, in class order"),
        ]

    def oip_request(self, tensors: dict[str, Tensor]) -> list | Preprocessed:
        n = image_or_pixels(self, tensors)
        if "image" in tensors:
            items = elements(tensors["image"])
            sizes = {size for size in map(_image_size, items) if size is not None}
            if len(sizes) > 1:
                raise TensorError(
                    f"input 'image': images of sizes {sorted(sizes)}; one request's images must share a size "
                    "(the mask output is one [N, height, width] tensor): send them in separate requests"
                )
            return items
        rows = Images([None] * n)  # pixels at the training size: masks at that size
        rows.sizes = [(self.spec.width, self.spec.height)] * n
        return Preprocessed(check_pixels(tensors["pixels"]), rows)

    def oip_response(self, results: list[SegmentPrediction]) -> dict[str, Tensor]:
        codes = list(self.spec.codes)
        masks = np.stack([np.asarray(r.mask_array, dtype=np.uint8) for r in results])
        fractions = np.array([[r.class_fractions[c] for c in codes] for r in results], dtype=np.float32)
        return {
            "mask": Tensor("mask", "UINT8", masks),
            "class_fractions": Tensor("class_fractions", "FP32", fractions.reshape(len(results), len(codes))),
        }


@roost_service
class Segment(ModelService):
    model_class = SegmentModel

    @bentoml.api(route="/predict")
    async def predict(
        self,
        image: UploadedFile,
        ctx: bentoml.Context,
        format: str = Field("png", description="'png' (default): mask as PNG only; 'raw': also `mask` as rows of class indices"),
    ) -> SegmentPrediction:
        """Segment one uploaded image file (multipart form field `image`; `format` as a form field or query parameter)."""
        fmt = check_format(ctx.request.query_params.get("format") or format)
        result = (await self.model([image]))[0]
        return raw_masks([result])[0] if fmt == "raw" else result

    @bentoml.api(route="/predict_batch")
    async def predict_batch(
        self,
        images: list[str] = Field(min_length=1, max_length=MAX_BATCH_ITEMS, description="base64-encoded image files"),
        format: str = Field("png", description="'png' (default) or 'raw'"),
    ) -> list[SegmentPrediction]:
        """Segment several base64-encoded images in one request (they share the batch)."""
        fmt = check_format(format)
        results = await self.model(images)
        return raw_masks(results) if fmt == "raw" else results
