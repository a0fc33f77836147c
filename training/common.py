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
