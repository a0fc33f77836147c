"""Training progress: fastai's progress bars on a terminal, one log line per epoch anywhere else."""

from __future__ import annotations

import logging
import sys

from fastai.callback.core import Callback
from fastai.learner import noop  # the one no_logging() installs
from fastai.callback.progress import ProgressCallback

log = logging.getLogger("roost.train")


class EpochLog(Callback):
    """One log line per epoch with the recorder's metrics: what a log that is not a terminal (CI, a
    Kubernetes Job) gets instead of fastai's progress bars, which redraw themselves many times a second."""

    order = 60  # ProgressCallback's: after the Recorder has the epoch's values

    def before_fit(self):
        self.old_logger = self.learn.logger
        if self.old_logger is not noop:  # validate() and get_preds() run "fits" with logging off
            self.learn.logger = self._write

    def after_fit(self):
        self.learn.logger = self.old_logger

    def _write(self, values) -> None:
        epoch, *rest = values
        fields = "  ".join(
            f"{name} {value:.6f}" if isinstance(value, float) else f"{name} {value}"
            for name, value in zip(self.recorder.metric_names[1:], rest)
        )
        log.info("epoch %d/%d  %s", epoch + 1, self.n_epoch, fields)


def log_progress(learn, terminal: bool | None = None):
    """fastai's progress bars on a terminal; one log line per epoch (EpochLog) anywhere else."""
    if terminal is None:
        terminal = sys.stdout.isatty()
    if not terminal:
        learn.remove_cb(ProgressCallback)
        learn.add_cb(EpochLog())
    return learn
