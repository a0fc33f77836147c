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

If the all-INT8 model fails its gate, a bounded, accuracy-aware fallback (as Intel Neural Compressor's
and OpenVINO's accuracy-aware tuning do) keeps part of the network in FP32: the quantizable convolutions
are cut into ``GROUPS`` contiguous groups in graph order, each group is ranked by how much keeping it in
FP32 lowers the output error on the *calibration* (training) images, and at most ``MAX_FALLBACKS`` more
candidates, the best group and then the best two, are judged on the validation set. The ranking never
sees the validation set; every candidate judged is listed in the manifest (``attempts``), so how many
looks the gate had is on record. (Measured on the bird model, efficientnet_lite0: the error is spread
over every layer, no single convolution matters, and the high-resolution first quarter of the network
contributes most of it: FP32 there cut the training images' logit MSE from 0.36 to 0.13.)

Otherwise the bundle keeps FP32 only and the manifest's ``quantization`` says why, with the figures.
Inputs are what the served graphs take: uint8 NHWC pixels.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.bundle import INT8_FILE, Quantization

log = logging.getLogger("roost.train")

CALIBRATION_IMAGES = 128
BATCH = 8
GROUPS = 4  # contiguous groups of quantizable convolutions the fallback may keep in FP32
MAX_FALLBACKS = 2  # candidates judged after the all-INT8 one: the best group, then the best two


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
    "fallback": f"up to {MAX_FALLBACKS} candidates with 1-2 of {GROUPS} convolution groups in FP32, ranked on the calibration images",
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


def conv_groups(model_path: Path, keep: list[str], groups: int = GROUPS) -> list[list[str]]:
    """The graph's nodes from the first quantizable Conv on, cut into ``groups`` contiguous runs with
    about as many quantizable Convs each: the units the fallback may keep in FP32 (a run, not single
    nodes, so no quantize/dequantize pair is left inside it)."""
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv" and n.name not in keep]
    starts = [int(part[0]) for part in np.array_split(np.array(convs, dtype=int), min(groups, len(convs))) if len(part)]
    bounds = starts + [len(nodes)]
    return [[n.name for n in nodes[a:b] if n.name not in keep] for a, b in zip(bounds, bounds[1:])]


class _Quantizer:
    """quant_pre_process once, calibration once (cached): then any number of QDQ models that differ only
    in which nodes stay FP32."""

    def __init__(self, fp32: Path, calibration: np.ndarray, tmp: Path):
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.calibration = calibration
        self.fp32 = _session(fp32)  # the reference every candidate is compared with
        self.name = self.fp32.get_inputs()[0].name
        self.pre = tmp / "pre.onnx"
        quant_pre_process(str(fp32), str(self.pre), skip_symbolic_shape=True)
        self.keep = fp32_nodes(self.pre)
        self.cached = {}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:  # onnxruntime >= 1.24
            self.cached["calibration_cache_path"] = str(tmp / "calibration.json")

    def quantize(self, out: Path, also_fp32: list[str] = ()) -> None:
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
        )

        calibration, name = self.calibration, self.name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{name: calibration[i : i + BATCH]} for i in range(0, len(calibration), BATCH)])

            def get_next(self):
                return next(self.batches, None)

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # onnxruntime.quantization logs a line per weight scale on the root logger
        try:
            quantize_static(
                str(self.pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                nodes_to_exclude=self.keep + list(also_fp32), activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, **self.cached,
            )
        finally:
            root.setLevel(level)


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
    ``gate`` on ``valid`` (uint8 NHWC, with class ``labels`` for classifiers): the all-INT8 model
    first, then at most ``MAX_FALLBACKS`` with part of the network in FP32 (module docstring). Never
    raises for a quantization that fails: the bundle is still good in FP32, and the manifest says
    what happened."""
    gate = gate or Gate()
    out = Path(out)
    info = {**calibration_info, "images": int(len(calibration))}
    common = dict(calibration=info, settings=dict(SETTINGS), gate={})
    attempts: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="roost-quant-", dir=out.parent) as tmp:
            tmp = Path(tmp)
            q = _Quantizer(fp32, calibration, tmp)
            reference = _run(q.fp32, valid)
            groups = conv_groups(q.pre, q.keep)

            def judged(path: Path, fp32_groups: list[int]):
                figures = agreement(task, reference, _run(_session(path), valid), labels)
                ok, why, bound = judge(task, figures, gate)
                attempts.append({
                    "fp32_groups": [f"{g + 1}/{len(groups)}" for g in fp32_groups] or "none",
                    "fp32_nodes": sum(len(groups[g]) for g in fp32_groups), "passed": ok,
                    **{k: round(v, 6) for k, v in figures.items()},
                })
                common["gate"] = bound
                return ok, why, figures

            best = tmp / "int8.onnx"
            q.quantize(best)
            ok, why, figures = judged(best, [])
            if not ok and MAX_FALLBACKS and len(groups) > 1:
                ranked = _rank_groups(q, groups, tmp)
                log.info("INT8 refused all-INT8 (%s); trying with FP32 groups ranked on the calibration images: %s",
                         why, ", ".join(f"{g + 1}: {err:.4g}" for err, g, _ in ranked))
                for k in range(1, min(MAX_FALLBACKS, len(groups)) + 1):  # the best k groups in FP32
                    chosen = sorted(g for _, g, _ in ranked[:k])
                    path = ranked[0][2] if k == 1 else tmp / f"fallback{k}.onnx"  # k == 1: the ranking built it
                    if k > 1:
                        q.quantize(path, [n for g in chosen for n in groups[g]])
                    ok, why, figures = judged(path, chosen)
                    if ok:
                        best = path
                        break
            if ok:
                best.rename(out)
    except Exception as exc:  # noqa: BLE001 - an FP32 bundle is still a bundle
        log.warning("INT8 quantization failed (%s); the bundle keeps FP32 only", exc)
        return Quantization(status="failed", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                            attempts=attempts, **common)
    tried = f" ({len(attempts)} candidates judged)" if len(attempts) > 1 else ""
    if not ok:
        log.warning("INT8 refused on the validation set: %s%s; the bundle keeps FP32 only", why, tried)
        return Quantization(status="refused", reason=why + tried, agreement=figures, attempts=attempts, **common)
    fallback = attempts[-1]["fp32_groups"]
    if fallback != "none":
        why += f"; convolution group(s) {', '.join(fallback)} kept in FP32{tried}"
    log.info("INT8 written (%s): %s", out.name, why)
    return Quantization(status="written", file=out.name, reason=why, agreement=figures, attempts=attempts, **common)


def _rank_groups(q: _Quantizer, groups: list[list[str]], tmp: Path) -> list[tuple[float, int, Path]]:
    """Each group kept in FP32 in turn: (output MSE against FP32 on the calibration images, group, the
    model), lowest error first. Only training images are used, never the validation set."""
    reference = _run(q.fp32, q.calibration)
    ranked = []
    for g, nodes in enumerate(groups):
        path = tmp / f"group{g}.onnx"
        q.quantize(path, nodes)
        ranked.append((float(((_run(_session(path), q.calibration) - reference) ** 2).mean()), g, path))
    return sorted(ranked)


def not_offered(kind: str) -> Quantization:
    """The manifest entry of a table or embedding model: nothing to gain from INT8."""
    return Quantization(
        status="none",
        reason=f"{kind}: not quantized; its network runs in microseconds per row, so serving time is request handling, not arithmetic",
    )


__all__ = ["Gate", "quantize_model", "not_offered", "INT8_FILE", "SETTINGS", "CALIBRATION_IMAGES", "asdict"]
