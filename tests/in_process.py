"""A lesson model exactly as its service builds it (runtime and batcher), in the test's process."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import tempfile
from pathlib import Path


def trusted_copy(bundle: Path) -> tuple[Path, str]:
    """A signed copy of ``bundle`` and the public key that trusts it (the fastai runtime needs both)."""
    from services.signing import keygen, sign

    folder = Path(tempfile.mkdtemp(prefix="roost-signed-"))
    private, public = keygen(folder / "keys")
    copy = folder / "bundle"
    shutil.copytree(bundle, copy)
    sign(copy, private)
    return copy, str(public)


def in_process_model(model: str, bundle: Path, runtime: str = "onnx", **settings):
    from services.registry import MODELS
    from services.settings import settings_for

    module, _ = MODELS[model].service.split(":")
    cls = next(
        v for v in vars(importlib.import_module(module)).values()
        if isinstance(v, type) and getattr(v, "name", None) == model and hasattr(v, "spec_kind")
    )
    trusted_key = None
    if runtime == "fastai":
        bundle, trusted_key = trusted_copy(Path(bundle))
    settings.setdefault("precision", "fp32")  # parity with fastai's FP32 learner; INT8: test_precision.py
    config = dataclasses.replace(
        settings_for(model), bundle=Path(bundle), runtime=runtime, trusted_key=trusted_key, **settings
    )
    return cls(settings=config).load()
