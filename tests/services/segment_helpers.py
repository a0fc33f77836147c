"""Shared by tests/training/test_segment.py and tests/services/test_segment.py: one quick U-Net per
test session (cached on disk under pytest's base temp, so two modules train it once), real CamVid
images, and an in-process SegmentModel wired to a runtime without BentoML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from services.bundle import MANIFEST_FILE
from tests.conftest import SHARED, train_quick

CAMVID = SHARED / "fastai_samples" / "camvid_tiny"


def camvid_images(n: int = 6, unseen: bool = True) -> list[Path]:
    """Real CamVid-tiny photos; by default the last ones, which the quick model (trained on the first
    training.segment.QUICK_IMAGES sorted images) never saw."""
    files = sorted((CAMVID / "images").iterdir())
    return files[-n:] if unseen else files[:n]


def segment_bundle(tmp_path_factory) -> Path:
    """The quick segmentation bundle, trained through `python -m training segment --quick` once per session."""
    root = tmp_path_factory.getbasetemp() / "segment-quick"
    found = sorted(p for p in (root / "segment").glob("*") if (p / MANIFEST_FILE).is_file()) if root.is_dir() else []
    if found:
        return found[-1]
    return train_quick("segment", root)


def in_process_model(bundle: Path, runtime: str = "onnx"):
    """SegmentModel exactly as the service builds it: runtime and batcher in-process."""
    from services.segment import SegmentModel
    from services.settings import settings_for

    settings = dataclasses.replace(settings_for("segment"), bundle=Path(bundle), runtime=runtime)
    return SegmentModel(settings=settings).load()
