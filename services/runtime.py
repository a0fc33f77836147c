"""Runtimes execute a bundle's network on a batch of preprocessed arrays.

Both take and return numpy: ``run({input_name: array}) -> [output arrays]``.
- OnnxRuntime (default): model.onnx or model.int8.onnx in onnxruntime, CUDA when available, else
  CPU. Which file: ``ROOST_PRECISION`` (:func:`model_file`): ``auto`` serves the bundle's INT8 model
  on CPU when it has one (it passed its gate at export) and FP32 on a GPU; ``fp32``; ``int8`` (a
  bundle without one is refused at start).
- FastaiRuntime: learner.pkl through fastai/torch; imported lazily, only after the pickle's
  sha256 matches the manifest. Image bundles' graphs take uint8 NHWC pixels; the learner takes what
  fastai's pipeline makes, so this runtime converts (services/preprocessing.to_float_nchw).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from services.bundle import INT8_FILE, LEARNER_FILE, MODEL_FILE, Bundle, BundleError

log = logging.getLogger("roost.runtime")
PRECISIONS = ("auto", "fp32", "int8")


def int8_absent(bundle: Bundle) -> str:
    """Why ``bundle`` has no INT8 model, in words (for the one line a refused start prints)."""
    q = bundle.manifest.quantization
    if q is None:
        why = "its manifest records no quantization (a bundle from before INT8 export)"
    elif q.status == "refused":
        why = f"its INT8 model was refused at export: {q.reason}"
    else:
        why = f"{q.status}: {q.reason}" if q.reason else q.status
    return f"ROOST_PRECISION=int8 but {bundle.path} has no {INT8_FILE} ({why}); use ROOST_PRECISION=auto or fp32"


def model_file(bundle: Bundle, precision: str = "auto", cuda: bool = False, runtime: str = "onnx") -> str:
    """The file a runtime serves: ``learner.pkl`` (fastai), ``model.int8.onnx`` or ``model.onnx``.
    Raises BundleError where ``precision`` asks for what the bundle or runtime cannot give."""
    if precision not in PRECISIONS:
        raise BundleError(f"ROOST_PRECISION={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if runtime == "fastai":
        if precision == "int8":
            raise BundleError("ROOST_PRECISION=int8 needs ROOST_RUNTIME=onnx (the fastai runtime serves learner.pkl in FP32)")
        return LEARNER_FILE
    if precision == "int8":
        if not bundle.manifest.has_int8():
            raise BundleError(int8_absent(bundle))
        return INT8_FILE
    if precision == "auto" and not cuda and bundle.manifest.has_int8():
        return INT8_FILE
    return MODEL_FILE


def precision_of(file: str) -> str:
    return "int8" if file == INT8_FILE else "fp32"


class OnnxRuntime:
    name = "onnx"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 0, precision: str = "auto"):
        import onnxruntime as ort

        available = ort.get_available_providers()
        cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        self.file = model_file(bundle, precision, cuda=cuda)
        self.precision = precision_of(self.file)
        path = bundle.verify_file(self.file)
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise BundleError(
                "ROOST_DEVICE=cuda but onnxruntime has no CUDAExecutionProvider "
                f"(available: {available}); install the gpu extra (onnxruntime-gpu)"
            )
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu wheels find pip's CUDA/cuDNN this way
                ort.preload_dlls()
        options = ort.SessionOptions()
        # Default: one intra-op thread per core this process may use; the batcher gives parallelism.
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        # No busy-waiting between ops: the cores are shared with decoding and HTTP in this process,
        # and spinning threads took them (measured: bird typed /predict at 4 clients 90 -> 137 req/s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        if device == "cuda" and self.device != "cuda":  # CUDA provider failed to initialise
            raise BundleError(f"ROOST_DEVICE=cuda but onnxruntime fell back to {self.providers}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        log.info("onnxruntime session for %s: %s (%s) on %s (%s)", bundle, self.file, self.precision, self.device, self.providers)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


class FastaiRuntime:
    name = "fastai"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 0, precision: str = "auto"):
        self.file = model_file(bundle, precision, runtime="fastai")
        self.precision = "fp32"
        path = bundle.verify_file(LEARNER_FILE)  # before unpickling anything
        import torch  # noqa: PLC0415 - lazy on purpose: serving images need no torch
        from fastai.learner import load_learner  # noqa: PLC0415

        if threads:
            torch.set_num_threads(threads)
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not use_cuda:
            raise BundleError("ROOST_DEVICE=cuda but torch sees no CUDA device")
        self.device = "cuda" if use_cuda else "cpu"
        self.torch = torch
        self.learn = load_learner(path, cpu=not use_cuda)
        self.model = self.learn.model.eval()
        self.input_names = [i.name for i in bundle.manifest.onnx_inputs]
        self.output_names = [o.name for o in bundle.manifest.onnx_outputs]
        self.providers = ["fastai/torch " + torch.__version__]
        spec = bundle.spec
        # image graphs take uint8 NHWC; the learner takes fastai's float NCHW batch
        self.image_stats = (spec.mean, spec.std) if spec.kind in ("image", "segmentation") else None
        log.info("fastai learner %s on %s", path, self.device)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        if self.image_stats is not None:
            from services.preprocessing import to_float_nchw

            feeds = {n: to_float_nchw(x, *self.image_stats) if x.dtype == np.uint8 else x for n, x in feeds.items()}
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            out = self.model(*args)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.as_subclass(torch.Tensor).float().cpu().numpy() for o in outs]


def load_runtime(bundle: Bundle, kind: str = "onnx", device: str = "auto", threads: int = 0, precision: str = "auto"):
    if kind == "onnx":
        return OnnxRuntime(bundle, device=device, threads=threads, precision=precision)
    if kind == "fastai":
        return FastaiRuntime(bundle, device=device, threads=threads, precision=precision)
    raise ValueError(f"unknown runtime {kind!r}: expected 'onnx' or 'fastai'")
