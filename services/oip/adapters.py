"""Per-kind adapters: OIP tensors -> a model's typed requests -> the model -> OIP tensors.

An adapter never runs a network itself: it turns input tensors into the same typed requests the
model's own API takes and awaits ``model(requests, protocol=...)`` (or ``model(Preprocessed(...))``
for pre-processed FP32 pixels), so every protocol shares the model's batcher, limits and metrics,
and OIP answers equal the typed API's. One adapter per bundle spec kind; a model class may name
its own with an ``oip_adapter`` class attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from services.model import Preprocessed, RoostModel
from services.oip.codec import FLOAT_TYPES, INTEGER_TYPES, Tensor, TensorError

MAX_IMAGE_ROWS = 64  # as the typed /predict_batch
MAX_TABLE_ROWS = 1024


@dataclass(frozen=True)
class TensorSpec:
    """One tensor in model metadata: name, datatype, shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()  # other input datatypes taken as well (documented, not in metadata)
    doc: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def field_of(result: Any, key: str) -> Any:
    """A field of a typed result, whether a pydantic model, a dataclass or a dict."""
    if isinstance(result, dict):
        return result[key]
    return getattr(result, key)


class Adapter:
    """Base: subclasses list their tensors and write :meth:`run`."""

    kind: ClassVar[str]
    max_rows: ClassVar[int] = MAX_IMAGE_ROWS

    def __init__(self, model: RoostModel):
        self.model = model
        self.spec = model.spec

    def inputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def outputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    async def run(self, tensors: dict[str, Tensor], protocol: str) -> dict[str, Tensor]:
        raise NotImplementedError

    # -- checks shared by every kind; they raise TensorError (-> 400 / INVALID_ARGUMENT) -------------
    def check_names(self, tensors: dict[str, Tensor], required: set[str] | None = None) -> None:
        known = {t.name for t in self.inputs()}
        unknown = sorted(set(tensors) - known)
        if unknown:
            raise TensorError(f"unknown input {unknown[0]!r}; model '{self.model.name}' takes {sorted(known)}")
        missing = sorted((required if required is not None else known) - set(tensors))
        if missing:
            raise TensorError(f"missing input {missing[0]!r}; model '{self.model.name}' needs {sorted(required or known)}")

    def spec_of(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs() if t.name == name)

    def check_tensor(self, tensor: Tensor) -> int:
        """Datatype and shape against the spec; returns the batch size (rows)."""
        spec = self.spec_of(tensor.name)
        allowed = (spec.datatype, *spec.accepts)
        if tensor.datatype not in allowed:
            raise TensorError(
                f"input '{tensor.name}': datatype {tensor.datatype}; expected {' or '.join(allowed)}"
            )
        shape = tensor.shape
        if len(spec.shape) == 1:
            # one element per row: [N], or [N, 1, ...] as Triton clients often send
            ok = len(shape) >= 1 and all(d == 1 for d in shape[1:])
        else:
            ok = len(shape) == len(spec.shape) and all(s in (-1, d) for s, d in zip(spec.shape, shape))
        if not ok:
            raise TensorError(f"input '{tensor.name}': shape {shape}; expected {list(spec.shape)} (-1: any size)")
        rows = shape[0]
        if rows < 1:
            raise TensorError(f"input '{tensor.name}': an empty batch (shape {shape})")
        if rows > self.max_rows:
            raise TensorError(f"input '{tensor.name}': {rows} rows; the limit is {self.max_rows} per request")
        return rows

    def check_rows(self, tensors: dict[str, Tensor]) -> int:
        sizes = {name: self.check_tensor(t) for name, t in tensors.items()}
        if len(set(sizes.values())) > 1:
            raise TensorError(f"inputs have different batch sizes: {sizes}")
        return next(iter(sizes.values()))

    def check_pixels(self, tensor: Tensor) -> np.ndarray:
        rows = np.ascontiguousarray(tensor.data, dtype=np.float32)
        if not np.isfinite(rows).all():
            raise TensorError(f"input '{tensor.name}': holds NaN or infinite values")
        return rows


def _elements(tensor: Tensor) -> list:
    """One element per row of a per-row tensor ([N] or [N, 1, ...])."""
    return list(tensor.data.reshape(tensor.shape[0]))


# --- image classifier (bird) ---------------------------------------------------------------------


def image_inputs(spec, image_doc: str) -> list[TensorSpec]:
    """Image models take encoded files (`image`) or already-preprocessed pixels (`pixels`)."""
    return [
        TensorSpec("image", "BYTES", (-1,), doc=image_doc),
        TensorSpec("pixels", "FP32", (-1, 3, spec.height, spec.width), doc="preprocessed: resized, /255, normalized, CHW"),
    ]


def image_or_pixels(adapter: "Adapter", tensors: dict[str, Tensor]) -> int:
    """Check that exactly one of `image` / `pixels` came, with known names; returns the row count."""
    adapter.check_names(tensors, set())
    if len(tensors) != 1:
        raise TensorError("send exactly one of the inputs 'image' (BYTES) or 'pixels' (FP32)")
    return adapter.check_rows(tensors)


class ImageAdapter(Adapter):
    """Inputs: ``image`` BYTES [N] (encoded files; base64 strings in JSON) or ``pixels`` FP32
    [N,3,H,W] (already resized and normalized). Outputs: ``label`` BYTES [N], ``probability`` FP32
    [N] (of the label), ``probabilities`` FP32 [N,C] in vocabulary order."""

    kind = "image"

    def inputs(self) -> list[TensorSpec]:
        return image_inputs(self.spec, "encoded image files (JPEG, PNG, ...), one per row; base64 strings in JSON")

    def outputs(self) -> list[TensorSpec]:
        n = len(self.spec.vocab)
        return [
            TensorSpec("label", "BYTES", (-1,), doc=f"the most probable class: {', '.join(self.spec.vocab)}"),
            TensorSpec("probability", "FP32", (-1,), doc="probability of label"),
            TensorSpec("probabilities", "FP32", (-1, n), doc=f"probability per class, in order {self.spec.vocab}"),
        ]

    async def call_model(self, tensors: dict[str, Tensor], protocol: str) -> list:
        image_or_pixels(self, tensors)
        if "image" in tensors:
            return await self.model(_elements(tensors["image"]), protocol=protocol)
        rows = self.check_pixels(tensors["pixels"])
        return await self.model(Preprocessed(rows), protocol=protocol)

    async def run(self, tensors: dict[str, Tensor], protocol: str) -> dict[str, Tensor]:
        results = await self.call_model(tensors, protocol)
        return classifier_outputs(results, list(self.spec.vocab), "label", "label")


# --- tabular (ADULT) --------------------------------------------------------------------------


def classifier_outputs(results: list, vocab: list[str], label_name: str, label_field: str) -> dict[str, Tensor]:
    """Typed classifier results -> label BYTES [N], probability FP32 [N], probabilities FP32 [N,C]."""
    labels = np.empty(len(results), dtype=object)
    labels[:] = [str(field_of(r, label_field)).encode() for r in results]
    probs = np.array([[field_of(r, "probabilities")[c] for c in vocab] for r in results], dtype=np.float32)
    best = np.array([field_of(r, "probability") for r in results], dtype=np.float32)
    return {
        label_name: Tensor(label_name, "BYTES", labels),
        "probability": Tensor("probability", "FP32", best),
        "probabilities": Tensor("probabilities", "FP32", probs.reshape(len(results), len(vocab))),
    }


NUMBER_TYPES = tuple(sorted(INTEGER_TYPES | FLOAT_TYPES))


class TabularAdapter(Adapter):
    """One tensor per raw column, [N] each: BYTES for categorical columns (UTF-8; "" = missing),
    FP32 for continuous ones (FP16/FP64/INT*/UINT* accepted; NaN = missing, filled as fastai
    does). Any column may be left out (missing in every row); the model still refuses rows that
    lack a column it cannot fill (e.g. age), as the typed API does. Outputs: ``<y_name>``
    (e.g. salary) BYTES [N], ``probability`` FP32 [N], ``probabilities`` FP32 [N,C]."""

    kind = "tabular"
    max_rows = MAX_TABLE_ROWS

    def _columns(self) -> tuple[list[str], list[str]]:
        s = self.spec
        derived = {f"{c}_na" for c in s.fill_values}
        return [c for c in s.cat_names if c not in derived], list(s.cont_names)

    def inputs(self) -> list[TensorSpec]:
        cats, conts = self._columns()
        return [TensorSpec(c, "BYTES", (-1,), doc="category (UTF-8); empty: missing") for c in cats] + [
            TensorSpec(c, "FP32", (-1,), accepts=tuple(t for t in NUMBER_TYPES if t != "FP32"), doc="number; NaN: missing")
            for c in conts
        ]

    def outputs(self) -> list[TensorSpec]:
        s = self.spec
        return [
            TensorSpec(s.y_name, "BYTES", (-1,), doc=f"the most probable class: {', '.join(s.vocab)}"),
            TensorSpec("probability", "FP32", (-1,), doc=f"probability of {s.y_name}"),
            TensorSpec("probabilities", "FP32", (-1, len(s.vocab)), doc=f"probability per class, in order {s.vocab}"),
        ]

    def records(self, tensors: dict[str, Tensor]) -> list[dict]:
        if not tensors:
            raise TensorError(f"no inputs; model '{self.model.name}' takes {[t.name for t in self.inputs()]}")
        self.check_names(tensors, set())
        n = self.check_rows(tensors)
        records: list[dict] = [{} for _ in range(n)]
        for name, tensor in tensors.items():
            for r, value in enumerate(_elements(tensor)):
                if tensor.datatype == "BYTES":
                    if isinstance(value, bytes):
                        try:
                            value = value.decode("utf-8")
                        except UnicodeDecodeError:
                            raise TensorError(f"input '{name}': row {r} is not UTF-8 text") from None
                    records[r][name] = value if value != "" else None
                else:
                    x = float(value)
                    records[r][name] = None if x != x else x  # NaN: missing, as in the CSV
        return records

    async def run(self, tensors: dict[str, Tensor], protocol: str) -> dict[str, Tensor]:
        results = await self.model(self.records(tensors), protocol=protocol)
        y = self.spec.y_name
        label_field = y if results and _has_field(results[0], y) else "label"
        return classifier_outputs(results, list(self.spec.vocab), y, label_field)


def _has_field(result: Any, key: str) -> bool:
    return key in result if isinstance(result, dict) else hasattr(result, key)


# --- segmentation (CamVid U-Net) ---------------------------------------------------------------


def _image_size(item: Any) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header, or None (the model reports bad images)."""
    import base64
    import io

    from PIL import Image

    try:
        if isinstance(item, str):
            item = base64.b64decode(item.split(",", 1)[1] if item.startswith("data:") else item, validate=True)
        with Image.open(io.BytesIO(item)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - undecodable: the model's own check answers with the field
        return None


class SegmentationAdapter(Adapter):
    """Inputs: ``image`` BYTES [N] (encoded files; base64 strings in JSON; all of one size) or
    ``pixels`` FP32 [N,3,H,W] at the training size. Outputs: ``mask`` UINT8 [N,h,w] class indices
    at the images' own size (the training size for pixels), ``class_fractions`` FP32 [N,C]."""

    kind = "segmentation"

    def inputs(self) -> list[TensorSpec]:
        return image_inputs(self.spec, "encoded image files of one size, one per row; base64 strings in JSON")

    def outputs(self) -> list[TensorSpec]:
        codes = list(self.spec.codes)
        return [
            TensorSpec("mask", "UINT8", (-1, -1, -1), doc=f"class index per pixel, [N, height, width]; classes {codes}"),
            TensorSpec("class_fractions", "FP32", (-1, len(codes)), doc="share of pixels per class, in class order"),
        ]

    async def run(self, tensors: dict[str, Tensor], protocol: str) -> dict[str, Tensor]:
        n = image_or_pixels(self, tensors)
        if "image" in tensors:
            items = _elements(tensors["image"])
            sizes = {size for size in map(_image_size, items) if size is not None}
            if len(sizes) > 1:
                raise TensorError(
                    f"input 'image': images of sizes {sorted(sizes)}; one request's images must share a size "
                    "(the mask output is one [N, height, width] tensor): send them in separate requests"
                )
            results = await self.model(items, protocol=protocol)
        else:
            rows = self.check_pixels(tensors["pixels"])
            request = SizedRows(n, (self.spec.width, self.spec.height))
            results = await self.model(Preprocessed(rows, request), protocol=protocol)
        masks = np.stack([np.asarray(_mask_of(r), dtype=np.uint8) for r in results])
        codes = list(self.spec.codes)
        fractions = np.array([[field_of(r, "class_fractions")[c] for c in codes] for r in results], dtype=np.float32)
        return {
            "mask": Tensor("mask", "UINT8", masks),
            "class_fractions": Tensor("class_fractions", "FP32", fractions.reshape(len(results), len(codes))),
        }


def _mask_of(result: Any) -> np.ndarray:
    mask = getattr(result, "mask_array", None)
    if mask is None:
        mask = field_of(result, "mask")
    return np.asarray(mask)


class SizedRows(list):
    """Stand-in request for pre-processed rows: one None per row, and each row's (width, height)
    as ``sizes`` (what a segmentation postprocess reads to size its masks)."""

    def __init__(self, n: int, size: tuple[int, int]):
        super().__init__([None] * n)
        self.sizes = [size] * n


# --- collaborative filtering --------------------------------------------------------------------


class CollabAdapter(Adapter):
    """Inputs: ``user`` and ``movie``, [N] each, INT64 (other integer types accepted) or BYTES
    (ids as text, as in ratings.csv). Outputs: ``rating`` FP32 [N] (within y_range),
    ``cold_start`` BOOL [N] (user or movie unknown to the model: a fallback rating)."""

    kind = "collab"
    max_rows = 4096

    def inputs(self) -> list[TensorSpec]:
        others = tuple(sorted((INTEGER_TYPES - {"INT64"}) | {"BYTES"}))
        return [
            TensorSpec("user", "INT64", (-1,), accepts=others, doc="userId (INT64, or BYTES text)"),
            TensorSpec("movie", "INT64", (-1,), accepts=others, doc="movieId (INT64, or BYTES text)"),
        ]

    def outputs(self) -> list[TensorSpec]:
        low, high = self.spec.y_range
        return [
            TensorSpec("rating", "FP32", (-1,), doc=f"predicted rating, within [{low}, {high}]"),
            TensorSpec("cold_start", "BOOL", (-1,), doc="user or movie unknown to the model: a fallback rating"),
        ]

    @staticmethod
    def _ids(tensor: Tensor) -> list:
        out = []
        for r, value in enumerate(_elements(tensor)):
            if tensor.datatype == "BYTES":
                if isinstance(value, bytes):
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise TensorError(f"input '{tensor.name}': row {r} is not UTF-8 text") from None
                out.append(value)
            else:
                out.append(int(value))
        return out

    async def run(self, tensors: dict[str, Tensor], protocol: str) -> dict[str, Tensor]:
        self.check_names(tensors)
        self.check_rows(tensors)
        pairs = [{"user": u, "movie": m} for u, m in zip(self._ids(tensors["user"]), self._ids(tensors["movie"]))]
        results = await self.model(pairs, protocol=protocol)
        return {
            "rating": Tensor("rating", "FP32", np.array([field_of(r, "rating") for r in results], dtype=np.float32)),
            "cold_start": Tensor("cold_start", "BOOL", np.array([bool(field_of(r, "cold_start")) for r in results], dtype=bool)),
        }


ADAPTERS: dict[str, type[Adapter]] = {
    "image": ImageAdapter,
    "segmentation": SegmentationAdapter,
    "tabular": TabularAdapter,
    "collab": CollabAdapter,
}


def adapter_for(model: RoostModel) -> Adapter:
    cls = getattr(type(model), "oip_adapter", None) or ADAPTERS.get(model.spec.kind)
    if cls is None:
        raise TypeError(f"no Open Inference Protocol adapter for model kind {model.spec.kind!r}")
    return cls(model)
