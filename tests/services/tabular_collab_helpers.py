"""Shared by the tabular and collab tests (training and services): real rows from the shared fastai
samples, and in-process models wired to a runtime without BentoML. (The quick bundles and learners:
bundle_of / learner_of, tests/conftest.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import SHARED

ADULT_CSV = SHARED / "fastai_samples" / "adult_sample" / "adult.csv"
RATINGS_CSV = SHARED / "fastai_samples" / "movie_lens_sample" / "ratings.csv"


def in_process_model(model: str, bundle: Path, runtime: str = "onnx"):
    """TabularModel / CollabModel exactly as the service builds it: runtime and batcher in-process."""
    from tests.in_process import in_process_model as build

    return build(model, bundle, runtime, ort_threads=1)


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
