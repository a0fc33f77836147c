"""Shared by the tabular and collab tests (training and services): one quick bundle per model per
test session (trained through `python -m training <model> --quick`, cached under pytest's base temp
so the training and the services modules share it), real rows from the shared fastai samples, and
in-process models wired to a runtime without BentoML."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from services.bundle import MANIFEST_FILE
from tests.conftest import SHARED, train_quick

ADULT_CSV = SHARED / "fastai_samples" / "adult_sample" / "adult.csv"
RATINGS_CSV = SHARED / "fastai_samples" / "movie_lens_sample" / "ratings.csv"


def quick_bundle(model: str, tmp_path_factory) -> Path:
    """The quick bundle of `model` ('tabular' or 'collab'), trained once per test session."""
    root = tmp_path_factory.getbasetemp() / f"{model}-quick"
    found = sorted(p for p in (root / model).glob("*") if (p / MANIFEST_FILE).is_file()) if root.is_dir() else []
    if found:
        return found[-1]
    return train_quick(model, root)


def load_learner(bundle: Path):
    from fastai.learner import load_learner as load

    return load(bundle / "learner.pkl", cpu=True)


def in_process_model(model: str, bundle: Path, runtime: str = "onnx"):
    """TabularModel / CollabModel exactly as the service builds it: runtime and batcher in-process."""
    from services.settings import settings_for

    if model == "tabular":
        from services.tabular import TabularModel as cls
    else:
        from services.collab import CollabModel as cls
    settings = dataclasses.replace(settings_for(model), bundle=Path(bundle), runtime=runtime, ort_threads=1)
    return cls(settings=settings).load()


def call(model, request):
    """Run the model's whole request path (preprocess -> runtime -> postprocess) in-process."""
    return asyncio.run(model(request))


def adult_frame(skipinitialspace: bool = True):
    """adult.csv as fastai reads it (skipinitialspace=True), or raw, leading spaces and all."""
    import pandas as pd

    return pd.read_csv(ADULT_CSV, skipinitialspace=skipinitialspace)


def request_rows(df) -> list[dict]:
    """DataFrame rows -> JSON-able request rows (NaN -> None; salary dropped)."""
    import math

    rows = []
    for record in df.drop(columns=["salary"], errors="ignore").to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    return rows
