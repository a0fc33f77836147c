"""What every recipe shares: options, environment, seeds, pictures."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("roost.train")


@dataclass
class TrainOptions:
    out: Path = Path("artifacts")
    data: Path | None = None  # a folder to train from instead of the lesson's download
    epochs: int | None = None  # None: the lesson's number
    size: int | None = None  # image models: None = the lesson's size
    bs: int | None = None
    quick: bool = False  # small data, small images, one epoch: for tests and smoke runs
    arch: str | None = None
    pretrained: bool = True
    seed: int = 42
    cache: Path = Path(".cache")
    int8: bool = True  # image models: quantize to model.int8.onnx, kept only if it passes its gate
    int8_min_agreement: float | None = None  # None: the gate's default (training/quantize.py)


def int8_plan(opts: TrainOptions, items, task: str):
    """The export's INT8 step for an image model (None when --no-int8)."""
    if not opts.int8:
        return None
    from training.export import Int8Plan
    from training.quantize import Gate

    gate = Gate()
    if opts.int8_min_agreement is not None:
        field = "min_pixel_agreement" if task == "semantic-segmentation" else "min_top1_agreement"
        gate = Gate(**{**gate.__dict__, field: opts.int8_min_agreement})
    return Int8Plan(calibration_items=list(items), gate=gate)


def prepare(opts: TrainOptions) -> None:
    """Writable fastai home, headless plots, deterministic seed, threads = cores."""
    opts.cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FASTAI_HOME", str((opts.cache / "fastai").resolve()))
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch
    from fastai.torch_core import set_seed

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    set_seed(opts.seed, reproducible=True)


def save_figure(path: Path, draw) -> None:
    """Call `draw()` (a fastai show_*/plot_* call) and save whatever it drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    result = draw()
    fig = getattr(result, "figure", None) or plt.gcf()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close("all")


def normalize_stats(dls) -> tuple[list[float] | None, list[float] | None]:
    """ImageNet stats if fastai added a Normalize to the pipeline (it does only with pretrained weights)."""
    from fastai.data.transforms import Normalize

    for tfm in dls.after_batch.fs:
        if isinstance(tfm, Normalize):
            return tfm.mean.flatten().tolist(), tfm.std.flatten().tolist()
    return None, None
