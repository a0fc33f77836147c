"""INT8 for the image models: static QDQ quantization with ONNX Runtime, kept only if it proves itself.

    quantize_model(bundle/model.onnx, bundle/model.int8.onnx, calibration, valid, task) -> Quantization

Recipe (measured in issue 10): ``quant_pre_process(..., skip_symbolic_shape=True)`` first (the dynamo
export's shapes need it), then ``quantize_static`` in QDQ format, per-channel, uint8 activations,
int8 weights, MinMax calibration on ~128 training images. The first and last layers stay FP32 (the
stem convolution that reads the pixels, the classifier head's Gemm/BatchNorm, a segmentation
model's output convolution): they are a few percent of the arithmetic, and on the quick bird model
keeping them halved the disagreements with FP32 (3.3 % -> 1.7 % of 60 photos). The INT8 model is then run beside the FP32
one on the whole validation set and written into the bundle only if it passes its gate:

- image classification: top-1 agreement with FP32 >= 99 % and an error rate at most 1 point worse;
- segmentation: pixel agreement (argmax) with FP32 >= 98 %.

Otherwise the bundle keeps FP32 only and the manifest's ``quantization`` says why, with the figures.
Inputs are what the served graphs take: uint8 NHWC pixels.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.bundle import INT8_FILE, Quantization

log = logging.getLogger("roost.train")

CALIBRATION_IMAGES = 128
BATCH = 8


@dataclass(frozen=True)
class Gate:
    min_top1_agreement: float = 0.99  # classification: share of validation images with the FP32 label
    max_error_increase: float = 0.01  # classification: INT8 error rate minus FP32 error rate
    min_pixel_agreement: float = 0.98  # segmentation: share of validation pixels with the FP32 class


SETTINGS = {
    "format": "QDQ",
    "per_channel": True,
    "activations": "uint8",
    "weights": "int8",
    "calibration_method": "MinMax",
    "pre_process": "quant_pre_process(skip_symbolic_shape=True)",
    "reduce_range": False,
    "fp32_layers": "first Conv, classifier head (Gemm, BatchNormalization), a Conv that produces the output",
}


def fp32_nodes(model_path: Path) -> list[str]:
    """Nodes kept in FP32: the first Conv, every Gemm/BatchNormalization (only the head has them after
    the pre-processing folds the backbone's BatchNorms) and a Conv whose output is the graph's output."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    outputs = {o.name for o in graph.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    keep = [convs[0].name] if convs else []
    keep += [n.name for n in graph.node if n.op_type in ("Gemm", "BatchNormalization")]
    keep += [n.name for n in convs if set(n.output) & outputs]
    return keep


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)])


def quantize_static_qdq(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """The recipe above: fp32 -> out (INT8 QDQ), calibrated on uint8 NHWC ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader

    name = _session(fp32).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: calibration[i : i + BATCH]} for i in range(0, len(calibration), BATCH)])

        def get_next(self):
            return next(self.batches, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # onnxruntime.quantization logs a line per weight scale on the root logger
    try:
        _quantize(fp32, out, Reader, name)
    finally:
        root.setLevel(level)


def _quantize(fp32: Path, out: Path, Reader, name: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="roost-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
            nodes_to_exclude=fp32_nodes(pre),
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )


def agreement(task: str, fp32_out: np.ndarray, int8_out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """The gate's figures for one task, from both models' outputs on the validation set."""
    a, b = fp32_out.argmax(axis=1), int8_out.argmax(axis=1)
    if task == "semantic-segmentation":
        return {"pixel_agreement": float((a == b).mean()), "pixels": float(a.size), "images": float(len(a))}
    figures = {"top1_agreement": float((a == b).mean()), "images": float(len(a))}
    if labels is not None:
        figures["fp32_error_rate"] = float((a != labels).mean())
        figures["int8_error_rate"] = float((b != labels).mean())
    return figures


def judge(task: str, figures: dict[str, float], gate: Gate) -> tuple[bool, str, dict[str, float]]:
    """(passed, reason in words, the thresholds used)."""
    if task == "semantic-segmentation":
        bound = {"min_pixel_agreement": gate.min_pixel_agreement}
        ok = figures["pixel_agreement"] >= gate.min_pixel_agreement
        why = f"pixel agreement with FP32 {figures['pixel_agreement']:.4f} {'>=' if ok else '<'} {gate.min_pixel_agreement}"
        return ok, why, bound
    bound = {"min_top1_agreement": gate.min_top1_agreement, "max_error_increase": gate.max_error_increase}
    reasons, ok = [], True
    agree = figures["top1_agreement"]
    if agree < gate.min_top1_agreement:
        ok = False
    reasons.append(f"top-1 agreement with FP32 {agree:.4f} {'>=' if agree >= gate.min_top1_agreement else '<'} {gate.min_top1_agreement}")
    if "int8_error_rate" in figures:
        worse = figures["int8_error_rate"] - figures["fp32_error_rate"]
        if worse > gate.max_error_increase + 1e-12:
            ok = False
        reasons.append(
            f"error rate {figures['int8_error_rate']:.4f} vs FP32 {figures['fp32_error_rate']:.4f} "
            f"({worse:+.4f}; at most {gate.max_error_increase:+.4f} allowed)"
        )
    return ok, "; ".join(reasons), bound


def quantize_model(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray | None,
    task: str,
    calibration_info: dict,
    gate: Gate | None = None,
) -> Quantization:
    """Quantize ``fp32`` into ``out`` (normally bundle/model.int8.onnx) and keep it only if it passes
    ``gate`` on ``valid`` (uint8 NHWC, with class ``labels`` for classifiers). Never raises for a
    quantization that fails: the bundle is still good in FP32, and the manifest says what happened."""
    gate = gate or Gate()
    out = Path(out)
    info = {**calibration_info, "images": int(len(calibration))}
    common = dict(calibration=info, settings=dict(SETTINGS), gate={})
    candidate = out.with_name(f".{out.name}.candidate")
    try:
        quantize_static_qdq(fp32, candidate, calibration)
        figures = agreement(task, _run(_session(fp32), valid), _run(_session(candidate), valid), labels)
    except Exception as exc:  # noqa: BLE001 - an FP32 bundle is still a bundle
        candidate.unlink(missing_ok=True)
        log.warning("INT8 quantization failed (%s); the bundle keeps FP32 only", exc)
        return Quantization(status="failed", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", **common)
    ok, why, bound = judge(task, figures, gate)
    common["gate"] = bound
    if not ok:
        candidate.unlink(missing_ok=True)
        log.warning("INT8 refused on the validation set: %s; the bundle keeps FP32 only", why)
        return Quantization(status="refused", reason=why, agreement=figures, **common)
    candidate.rename(out)
    log.info("INT8 written (%s): %s", out.name, why)
    return Quantization(status="written", file=out.name, reason=why, agreement=figures, **common)


def not_offered(kind: str) -> Quantization:
    """The manifest entry of a table or embedding model: nothing to gain from INT8."""
    return Quantization(
        status="none",
        reason=f"{kind}: not quantized; its network runs in microseconds per row, so serving time is request handling, not arithmetic",
    )


__all__ = ["Gate", "quantize_model", "not_offered", "INT8_FILE", "SETTINGS", "CALIBRATION_IMAGES", "asdict"]
