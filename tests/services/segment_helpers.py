"""Shared by the segmentation tests (training and services): real CamVid images, and an in-process
SegmentModel wired to a runtime without BentoML. (The quick bundle: bundle_of("segment"), tests/conftest.py.)"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SHARED

CAMVID = SHARED / "fastai_samples" / "camvid_tiny"


def camvid_images(n: int = 6, unseen: bool = True) -> list[Path]:
    """Real CamVid-tiny photos; by default the last ones, which the quick model (trained on the first
    training.segment.QUICK_IMAGES sorted images) never saw."""
    files = sorted((CAMVID / "images").iterdir())
    return files[-n:] if unseen else files[:n]


def in_process_model(bundle: Path, runtime: str = "onnx"):
    """SegmentModel exactly as the service builds it: runtime and batcher in-process."""
    from tests.in_process import in_process_model as build

    return build("segment", bundle, runtime)
