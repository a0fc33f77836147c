"""Runtimes execute a bundle's network on a batch of preprocessed arrays.

Both take and return numpy: ``run({input_name: array}) -> [output arrays]``.
- OnnxRuntime (default): model.onnx in onnxruntime, CUDA when available, else CPU.
- FastaiRuntime: learner.pkl through fastai/torch; imported lazily, only after the pickle's
  sha256 matches the manifest.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from services.bundle import LEARNER_FILE, MODEL_FILE, Bundle, BundleError

log = logging.getLogger("roost.runtime")


class OnnxRuntime:
    name = "onnx"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        path = bundle.verify_file(MODEL_FILE)
        available = ort.get_available_providers()
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
        log.info("onnxruntime session for %s on %s (%s)", bundle, self.device, self.providers)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


class FastaiRuntime:
    name = "fastai"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 0):
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
        log.info("fastai learner %s on %s", path, self.device)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            out = self.model(*args)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.as_subclass(torch.Tensor).float().cpu().numpy() for o in outs]


def load_runtime(bundle: Bundle, kind: str = "onnx", device: str = "auto", threads: int = 0):
    if kind == "onnx":
        return OnnxRuntime(bundle, device=device, threads=threads)
    if kind == "fastai":
        return FastaiRuntime(bundle, device=device, threads=threads)
    raise ValueError(f"unknown runtime {kind!r}: expected 'onnx' or 'fastai'")
