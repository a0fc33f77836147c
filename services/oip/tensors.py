"""What every model's Open Inference Protocol declarations share; nothing here knows a model.

Each model declares its own tensors next to its typed API (services/bird.py, segment.py,
tabular.py, collab.py) through :class:`OipModel`: the input and output :class:`TensorSpec` lists
(functions of its bundle spec), how decoded input tensors become the request its ``__call__``
takes (or a ``Preprocessed``), and how its typed results become output tensors. :class:`OipCore`
(core.py) only calls those. Here: the spec type, the generic checks, which raise TensorError
(-> 400 / INVALID_ARGUMENT) before the model sees a request, per-row element extraction, and the
helpers two models share (image inputs; classifier outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import numpy as np

from services.oip.codec import FLOAT_TYPES, INTEGER_TYPES, Tensor, TensorError

NUMBER_TYPES = tuple(sorted(INTEGER_TYPES | FLOAT_TYPES))


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


class OipModel:
    """Mixin for a RoostModel served over the protocol: it declares its own tensors.

    ``oip_request`` checks the tensors (with the helpers below) and returns what
    ``model(request, protocol=...)`` takes, so every protocol shares the model's batcher, limits and
    metrics and OIP answers equal the typed API's; ``oip_response`` turns the model's own typed
    results into output tensors, keyed by name (all of ``oip_outputs()``).
    """

    name: ClassVar[str]
    oip_max_rows: ClassVar[int]  # rows one request may carry

    def oip_inputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def oip_outputs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def oip_request(self, tensors: dict[str, Tensor]) -> Any:
        raise NotImplementedError

    def oip_input_specs(self) -> dict[str, TensorSpec]:
        """The declared inputs by name, built once: they follow from the loaded bundle, and every
        request's checks read them."""
        specs = self.__dict__.get("_oip_input_specs")
        if specs is None:
            specs = self.__dict__["_oip_input_specs"] = {t.name: t for t in self.oip_inputs()}
        return specs

    def oip_response(self, results: Any) -> dict[str, Tensor]:
        raise NotImplementedError


# --- generic checks: a model's declarations against the tensors a request sent ---------------------


def check_names(model: OipModel, tensors: dict[str, Tensor], required: set[str] | None = None) -> None:
    """Every tensor is a declared input, and every ``required`` one (default: all) came."""
    known = set(model.oip_input_specs())
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise TensorError(f"unknown input {unknown[0]!r}; model '{model.name}' takes {sorted(known)}")
    missing = sorted((required if required is not None else known) - set(tensors))
    if missing:
        raise TensorError(f"missing input {missing[0]!r}; model '{model.name}' needs {sorted(required or known)}")


def check_tensor(model: OipModel, tensor: Tensor) -> int:
    """Datatype and shape against the input's spec; returns the batch size (rows)."""
    spec = model.oip_input_specs()[tensor.name]
    allowed = (spec.datatype, *spec.accepts)
    if tensor.datatype not in allowed:
        raise TensorError(f"input '{tensor.name}': datatype {tensor.datatype}; expected {' or '.join(allowed)}")
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
    if rows > model.oip_max_rows:
        raise TensorError(f"input '{tensor.name}': {rows} rows; the limit is {model.oip_max_rows} per request")
    return rows


def check_rows(model: OipModel, tensors: dict[str, Tensor]) -> int:
    """Every tensor checked, all with one batch size; returns it."""
    sizes = {name: check_tensor(model, t) for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise TensorError(f"inputs have different batch sizes: {sizes}")
    return next(iter(sizes.values()))


def check_pixels(tensor: Tensor) -> np.ndarray:
    """A `pixels` tensor (UINT8 [N,H,W,3], checked against its spec) as contiguous uint8 rows: what
    the image graphs take."""
    return np.ascontiguousarray(tensor.data, dtype=np.uint8)


# --- per-row elements -----------------------------------------------------------------------------


def elements(tensor: Tensor) -> list:
    """One element per row of a per-row tensor ([N] or [N, 1, ...])."""
    return list(tensor.data.reshape(tensor.shape[0]))


def texts(tensor: Tensor) -> list[str]:
    """A per-row BYTES tensor's elements as text (binary elements are UTF-8; JSON ones are text)."""
    out = []
    for r, value in enumerate(elements(tensor)):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise TensorError(f"input '{tensor.name}': row {r} is not UTF-8 text") from None
        out.append(value)
    return out


# --- shared by two models ---------------------------------------------------------------------


def image_inputs(spec, image_doc: str) -> list[TensorSpec]:
    """Image models take encoded files (`image`) or already-preprocessed pixels (`pixels`)."""
    return [
        TensorSpec("image", "BYTES", (-1,), doc=image_doc),
        TensorSpec("pixels", "UINT8", (-1, spec.height, spec.width, 3),
                   doc="decoded RGB pixels resized (squish) to the model's size, NHWC; the model scales and normalizes"),
    ]


def image_or_pixels(model: OipModel, tensors: dict[str, Tensor]) -> int:
    """Exactly one of `image` / `pixels` came, with known names; returns the row count."""
    check_names(model, tensors, set())
    if len(tensors) != 1:
        raise TensorError("send exactly one of the inputs 'image' (BYTES) or 'pixels' (UINT8)")
    return check_rows(model, tensors)


def classifier_outputs(label_name: str, vocab: list[str]) -> list[TensorSpec]:
    """A classifier's outputs: <label_name> BYTES [N], probability FP32 [N], probabilities FP32 [N,C]."""
    return [
        TensorSpec(label_name, "BYTES", (-1,), doc=f"the most probable class: {', '.join(vocab)}"),
        TensorSpec("probability", "FP32", (-1,), doc=f"probability of {label_name}"),
        TensorSpec("probabilities", "FP32", (-1, len(vocab)), doc=f"probability per class, in order {vocab}"),
    ]


def classifier_tensors(
    label_name: str, vocab: list[str], rows: Iterable[tuple[str, float, dict[str, float]]]
) -> dict[str, Tensor]:
    """(label, its probability, every class's probability) per row -> the :func:`classifier_outputs` tensors."""
    rows = list(rows)
    labels = np.empty(len(rows), dtype=object)
    labels[:] = [str(label).encode() for label, _, _ in rows]
    best = np.array([p for _, p, _ in rows], dtype=np.float32)
    probs = np.array([[per_class[c] for c in vocab] for _, _, per_class in rows], dtype=np.float32)
    return {
        label_name: Tensor(label_name, "BYTES", labels),
        "probability": Tensor("probability", "FP32", best),
        "probabilities": Tensor("probabilities", "FP32", probs.reshape(len(rows), len(vocab))),
    }
