"""Training progress: bars on a terminal, one log line per epoch elsewhere; learner.pkl unaffected."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastai.callback.progress import ProgressCallback

from tests.conftest import ROOT
from training.export import exportable
from training.progress import EpochLog, log_progress


def tiny_learner():
    """A real, exportable fastai learner that fits in a blink: two classes from one column."""
    import numpy as np
    import pandas as pd
    from fastai.tabular.all import Normalize, TabularDataLoaders, tabular_learner

    rng = np.random.default_rng(0)
    x = rng.standard_normal(96)
    df = pd.DataFrame({"x": x, "y": np.where(x > 0, "pos", "neg")})
    dls = TabularDataLoaders.from_df(df, y_names="y", cont_names=["x"], procs=[Normalize], bs=32)
    return tabular_learner(dls, layers=[4])


def callbacks(learn) -> set[type]:
    return {type(cb) for cb in learn.cbs}


def test_off_a_terminal_each_epoch_is_one_log_line_and_nothing_else_is_printed(capfd, caplog):
    learn = log_progress(tiny_learner(), terminal=False)
    with caplog.at_level(logging.INFO, logger="roost.train"):
        learn.fit(3)
        learn.validate()
        learn.get_preds()
    lines = [r.getMessage() for r in caplog.records if r.name == "roost.train"]
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("train_loss " in line and "valid_loss " in line and "time " in line for line in lines)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no bars, no printed tables


def test_on_a_terminal_fastai_keeps_its_progress_bars():
    learn = log_progress(tiny_learner(), terminal=True)
    assert ProgressCallback in callbacks(learn) and EpochLog not in callbacks(learn)


def test_the_exported_learner_has_fastais_default_callbacks_and_needs_nothing_from_training(tmp_path, monkeypatch):
    learn = log_progress(tiny_learner(), terminal=False)
    with exportable(learn):
        assert ProgressCallback in callbacks(learn) and EpochLog not in callbacks(learn)
        learn.export(tmp_path / "learner.pkl")
    assert EpochLog in callbacks(learn) and ProgressCallback not in callbacks(learn)  # back to one line per epoch
    for name in [m for m in sys.modules if m == "training" or m.startswith("training.")]:
        monkeypatch.setitem(sys.modules, name, None)
    from fastai.learner import load_learner

    assert ProgressCallback in callbacks(load_learner(tmp_path / "learner.pkl", cpu=True))


@pytest.mark.slow
def test_a_training_log_names_the_final_files_and_has_one_line_per_epoch(tmp_path):
    """What a CI job or a Kubernetes Job shows: stdout and stderr are pipes, not a terminal."""
    result = subprocess.run(
        [sys.executable, "-m", "training", "collab", "--quick", "--out", str(tmp_path), "--cache", str(ROOT / ".cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = Path(result.stdout.strip())  # stdout holds the bundle folder and nothing else
    assert bundle.is_dir() and ".partial" not in result.stderr
    logged = re.findall(r"roost\.train: (picture|file): (\S+)", result.stderr)
    assert {Path(path) for _, path in logged} == {p for p in bundle.iterdir() if p.suffix in (".png", ".csv")}
    epochs = re.findall(r"roost\.train: (epoch \d+/\d+)  train_loss", result.stderr)
    assert epochs == ["epoch 1/1", "epoch 1/1"]  # fine_tune(1): the frozen epoch, then one more
    assert "\r" not in result.stderr + result.stdout and "█" not in result.stderr + result.stdout
