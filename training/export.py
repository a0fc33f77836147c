"""The one export every recipe uses: learner -> learner.pkl + model.onnx + preprocess.json +
pictures + manifest.json, verified (ONNX Runtime vs the re-loaded pickle) before it is sealed."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
import time
import types
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from services.bundle import (
    IMAGE_INPUT,
    INT8_FILE,
    LEARNER_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PREPROCESS_FILE,
    DataSummary,
    Manifest,
    Quantization,
    TensorInfo,
    new_version,
    seal,
    write_spec,
)
from services.signing import SIGNING_KEY_ENV, sign

log = logging.getLogger("roost.train")
OPSET = 18
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAINING_CODE = ("training", "services", "pyproject.toml")  # what git_dirty looks at


class ExportError(RuntimeError):
    pass


@dataclass
class OnnxSignature:
    input_names: list[str]
    output_names: list[str]
    example_inputs: tuple  # torch tensors, batch first
    dynamic_shapes: tuple  # one {axis: torch.export.Dim} per input


class ImageInput:
    """The image models' graph input: uint8 NHWC pixels, as decoded and resized. The exported graph
    does what fastai's IntToFloatTensor and Normalize do, in the same order and float32 arithmetic
    (cast, /255, (x - mean) / std) and the NHWC -> NCHW transpose, so a server does no float math per
    pixel and moves a quarter of the bytes."""

    def __init__(self, mean: list[float] | None, std: list[float] | None):
        self.mean, self.std = mean, std

    def wrap(self, model):
        """``model`` (float NCHW, normalized) -> a module that takes uint8 NHWC."""
        import torch
        import torch.nn as nn

        mean, std = self.mean, self.std

        class Uint8Nhwc(nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net
                self.normalize = mean is not None and std is not None
                if self.normalize:
                    self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
                    self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

            def forward(self, pixels):
                x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
                if self.normalize:
                    x = (x - self.mean) / self.std
                return self.net(x)

        return Uint8Nhwc(model).eval()

    def from_batch(self, x):
        """A fastai batch (float NCHW, /255, normalized) -> the uint8 NHWC pixels it was made from."""
        import torch

        x = x.as_subclass(torch.Tensor).detach().cpu().float()
        if self.mean is not None and self.std is not None:
            x = x * torch.tensor(self.std).view(1, 3, 1, 1) + torch.tensor(self.mean).view(1, 3, 1, 1)
        return (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@dataclass
class Int8Plan:
    """Image models: quantize after the FP32 export (training/quantize.py). ``calibration``: training
    items (files) that ``dls.test_dl`` turns into validation-style batches."""

    calibration_items: list
    gate: object = None  # training.quantize.Gate; None: the default gate
    source: str = "training set"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "fastai", "fastcore", "timm", "onnx", "onnxruntime", "onnxscript", "numpy", "pandas", "pillow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def code_revision() -> tuple[str | None, bool | None]:
    """The git commit of this checkout and whether the training code differs from it; (None, None)
    where there is no git or no checkout of its own (e.g. an image built without .git)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=30).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != PROJECT_ROOT:
            return None, None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", *TRAINING_CODE))
    except (OSError, subprocess.SubprocessError):
        return None, None


def _portable_pickle_module():
    """cloudpickle, except that it leaves out the `__file__` (an absolute path of this machine) that it
    records with every function it pickles by value, e.g. fastai's PILBase.create; loading never reads it."""
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def _function_getnewargs(self, func):
            code, base_globals, *rest = super()._function_getnewargs(func)
            base_globals.pop("__file__", None)
            return (code, base_globals, *rest)

    return types.SimpleNamespace(Pickler=Pickler, __name__="roost_portable_cloudpickle")


@contextlib.contextmanager
def exportable(learn):
    """The learner as learn.export should write it: no path of this machine (learn.path and dls.path
    name the data folder; the converted weights' path is in timm's pretrained_cfg and in the
    pretrained_cfg_overlay that vision_learner keeps on the learner) and fastai's default
    ProgressCallback instead of our EpochLog, so learner.pkl needs nothing from `training`."""
    from fastai.callback.progress import ProgressCallback

    from training.progress import EpochLog

    saved_paths = learn.path, learn.dls.path
    cfgs = [getattr(m, "pretrained_cfg", None) for m in learn.model.modules()] + [getattr(learn, "pretrained_cfg_overlay", None)]
    cfgs = [cfg for cfg in cfgs if isinstance(cfg, dict)]
    saved_files = [cfg.get("file") for cfg in cfgs]
    ours = [cb for cb in learn.cbs if isinstance(cb, EpochLog)]
    learn.path = learn.dls.path = Path(".")
    for cfg, file in zip(cfgs, saved_files):
        if file:
            cfg["file"] = Path(file).name
    if ours:
        learn.remove_cbs(ours)
        learn.add_cb(ProgressCallback())
    try:
        yield learn
    finally:
        learn.path, learn.dls.path = saved_paths
        for cfg, file in zip(cfgs, saved_files):
            if file:
                cfg["file"] = file
        if ours:
            learn.remove_cb(ProgressCallback)
            learn.add_cbs(ours)


def export_learner(learn, path: Path) -> None:
    with exportable(learn):
        learn.export(Path(path).resolve(), pickle_module=_portable_pickle_module())


def plain_model(model):
    """A copy of the network that torch.onnx's dynamo exporter can trace: fastai's ToTensorBase
    (last layer of DynamicUnet) re-wraps outputs in a tensor subclass, which breaks FakeTensor."""
    import torch.nn as nn
    from fastai.layers import ToTensorBase

    model = copy.deepcopy(model).eval().cpu()
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, ToTensorBase):
                setattr(parent, child_name, nn.Identity())
    return model


def export_onnx(model, signature: OnnxSignature, path: Path, image_input: ImageInput | None = None) -> None:
    import torch

    plain = plain_model(model)
    if image_input is not None:
        plain = image_input.wrap(plain)
    inputs = tuple(t.as_subclass(torch.Tensor).cpu() for t in signature.example_inputs)
    with torch.no_grad():
        torch.onnx.export(
            plain,
            inputs,
            str(path),
            input_names=signature.input_names,
            output_names=signature.output_names,
            dynamo=True,
            dynamic_shapes=signature.dynamic_shapes,
            external_data=False,
            opset_version=OPSET,
            verbose=False,
        )
    strip_stack_traces(path)


def strip_stack_traces(path: Path) -> None:
    """The dynamo exporter annotates every node with the Python stack that made it, full of absolute
    paths of this machine's venv and checkout: drop those (and doc strings); keep the other metadata
    (name scopes, class hierarchy), which names modules, not files."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        for node in graph.node:
            nodes.append(node)
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
    for node in nodes:
        node.doc_string = ""
        keep = [p for p in node.metadata_props if not p.key.endswith("stack_trace")]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    model.doc_string = ""
    onnx.save(model, str(path))


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return x


def verify_onnx(
    learner_pkl: Path, onnx_path: Path, dl, n_inputs: int, activation: str, max_batches: int | None = None,
    image_input: ImageInput | None = None,
) -> dict[str, float]:
    """Run the validation set through the re-loaded pickle (torch) and model.onnx (onnxruntime); an
    image graph gets the uint8 NHWC pixels each batch was made from, the pickle fastai's batch."""
    import onnxruntime as ort
    import torch
    from fastai.learner import load_learner

    pickled = load_learner(learner_pkl, cpu=True)
    model = pickled.model.eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    max_diff, agree, total, rows = 0.0, 0, 0, 0
    for i, batch in enumerate(dl):
        if max_batches is not None and i >= max_batches:
            break
        xs = [t.as_subclass(torch.Tensor).cpu() for t in batch[:n_inputs]]
        with torch.no_grad():
            expected = _activate(model(*xs).as_subclass(torch.Tensor).float().numpy(), activation)
        feeds = [image_input.from_batch(xs[0])] if image_input is not None else xs
        got = _activate(session.run(None, {n: x.numpy() for n, x in zip(names, feeds)})[0], activation)
        max_diff = max(max_diff, float(np.abs(expected - got).max()))
        rows += len(expected)
        if activation == "softmax":
            same = expected.argmax(axis=1) == got.argmax(axis=1)
            agree += int(same.sum())
            total += same.size
    result = {"max_abs_diff": max_diff, "rows": float(rows)}
    if total:
        result["argmax_agreement"] = agree / total
    return result


def quantize_images(learn, folder: Path, task: str, image_input: ImageInput, plan: Int8Plan, verify_dl) -> Quantization:
    """model.onnx -> model.int8.onnx in ``folder`` if it passes its gate on the validation set."""
    import torch

    from training.quantize import CALIBRATION_IMAGES, quantize_model

    items = list(plan.calibration_items)[:CALIBRATION_IMAGES]
    calibration = np.concatenate([
        image_input.from_batch(b[0]).numpy() for b in learn.dls.test_dl(items, bs=16, shuffle=False, drop_last=False)
    ])
    pixels, labels = [], []
    for batch in verify_dl:
        pixels.append(image_input.from_batch(batch[0]).numpy())
        if task == "image-classification":
            labels.append(batch[1].as_subclass(torch.Tensor).cpu().numpy())
    return quantize_model(
        folder / MODEL_FILE, folder / INT8_FILE, calibration, np.concatenate(pixels),
        np.concatenate(labels) if labels else None, task,
        {"split": plan.source, "first": f"{len(items)} items in the split's order"}, plan.gate,
    )


def onnx_tensor_infos(onnx_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def info(arg) -> TensorInfo:
        dtype = arg.type.replace("tensor(", "").rstrip(")")
        return TensorInfo(name=arg.name, dtype=dtype, shape=[d if isinstance(d, int) else str(d) for d in arg.shape])

    return [info(a) for a in session.get_inputs()], [info(a) for a in session.get_outputs()]


def open_staging(out_root: Path | str, name: str) -> tuple[str, Path, Path]:
    """A new version, its final folder, and an empty staging folder beside it to write into."""
    version = new_version()
    final = Path(out_root) / name / version
    staging = Path(out_root) / name / f".{version}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return version, final, staging


def publish(staging: Path, final: Path) -> Path:
    """Sign a sealed staging folder when ROOST_SIGNING_KEY names a key (who made it, not only that
    it is intact: services/signing.py), then move it to its final name, whole."""
    signing_key = os.environ.get(SIGNING_KEY_ENV)
    if signing_key:
        log.info("signed: %s", sign(staging, signing_key).name)
    staging.rename(final)
    return final


def write_bundle(
    learn,
    *,
    name: str,
    task: str,
    out_root: Path,
    spec,
    signature: OnnxSignature,
    verify_dl,
    activation: str,
    arch: str,
    weights: str,
    data: DataSummary,
    metrics: dict[str, float],
    training_seconds: float,
    pictures: Callable[[Path], None],
    settings: dict | None = None,
    tolerance: float = 1e-4,
    verify_batches: int | None = None,
    image_input: ImageInput | None = None,
    int8: Int8Plan | None = None,
) -> Path:
    """Write, verify and seal one bundle; the folder appears under its version only when whole."""
    version, final, staging = open_staging(out_root, name)
    try:
        start = time.perf_counter()
        export_learner(learn, staging / LEARNER_FILE)
        export_onnx(learn.model, signature, staging / MODEL_FILE, image_input)
        write_spec(staging, spec)
        parity = verify_onnx(
            staging / LEARNER_FILE, staging / MODEL_FILE, verify_dl, len(signature.input_names), activation, verify_batches, image_input
        )
        log.info("export parity, ONNX Runtime vs re-loaded learner.pkl: %s", parity)
        if parity["max_abs_diff"] > tolerance or parity.get("argmax_agreement", 1.0) < 1.0:
            raise ExportError(f"ONNX export does not match the learner: {parity} (tolerance {tolerance})")
        if int8 is not None and image_input is not None:
            quantization = quantize_images(learn, staging, task, image_input, int8, verify_dl)
        elif image_input is not None:
            quantization = Quantization(status="none", reason="not asked for (--no-int8)")
        else:
            from training.quantize import not_offered

            quantization = not_offered(task)
        pictures(staging)
        inputs, outputs = onnx_tensor_infos(staging / MODEL_FILE)
        commit, dirty = code_revision()
        seal(
            staging,
            dict(
                name=name,
                version=version,
                created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                task=task,
                arch=arch,
                weights=weights,
                versions=library_versions(),
                data=data,
                metrics={k: float(v) for k, v in metrics.items()},
                training_seconds=round(training_seconds, 2),
                onnx_inputs=inputs,
                onnx_outputs=outputs,
                onnx_opset=OPSET,
                export_parity=parity,
                settings=settings or {},
                git_commit=commit,
                git_dirty=dirty,
                image_input=IMAGE_INPUT if image_input is not None else None,
                quantization=quantization,
            ),
        )
        publish(staging, final)
        for extra in sorted(p for p in final.iterdir() if p.name not in (MODEL_FILE, LEARNER_FILE, PREPROCESS_FILE, MANIFEST_FILE)):
            log.info("%s: %s", "picture" if extra.suffix == ".png" else "file", extra)
        log.info("bundle written: %s (export %.1f s)", final, time.perf_counter() - start)
        return final
    except BaseException:
        log.error("export failed; partial bundle left for inspection at %s", staging)
        raise


__all__ = ["ImageInput", "Int8Plan", "OnnxSignature", "write_bundle", "export_onnx", "verify_onnx", "ExportError", "Manifest"]
