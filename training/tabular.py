"""Lesson 1, tabular: will this person earn >= 50k? `tabular_learner` + `fit_one_cycle(3)` on ADULT."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from services.bundle import DataSummary, TabularSpec, sha256_file
from training.common import TrainOptions, prepare, save_figure
from training.data import lesson_sample
from training.export import OnnxSignature, write_bundle

log = logging.getLogger("roost.train")

CSV_NAME = "adult.csv"
Y_NAME = "salary"
CAT_NAMES = ["workclass", "education", "marital-status", "occupation", "relationship", "race"]
CONT_NAMES = ["age", "fnlwgt", "education-num"]
LESSON_EPOCHS = 3
QUICK_ROWS, QUICK_BS = 2000, 128  # first rows of adult.csv for --quick (still holds missing education-num and occupation)


def build_learner(csv: Path, path: Path, bs: int | None = None):
    """Exactly the lesson's TabularDataLoaders and learner."""
    from fastai.tabular.all import Categorify, FillMissing, Normalize, TabularDataLoaders, accuracy, tabular_learner

    dls = TabularDataLoaders.from_csv(
        csv, path=path, y_names=Y_NAME, cat_names=list(CAT_NAMES), cont_names=list(CONT_NAMES),
        procs=[Categorify, FillMissing, Normalize], **({"bs": bs} if bs else {}),
    )
    return tabular_learner(dls, metrics=accuracy)


def spec_from_dls(dls, regression: bool = False) -> TabularSpec:
    """Everything fastai's procs learned on the training split, in the model's column order. The
    lesson uses all three procs; a learner without FillMissing has no fill values (a missing number
    is refused), one without Normalize feeds numbers as they are (mean 0, std 1). ``regression``:
    the target is a number (no classes)."""
    procs = dls.procs
    categorify = getattr(procs, "categorify", None)
    fill = getattr(procs, "fill_missing", None)
    normalize = getattr(procs, "normalize", None)
    if dls.cat_names and categorify is None:
        raise ValueError(f"categorical columns {list(dls.cat_names)} but no Categorify proc: their indices are unknown")
    # numpy scalars (str_, bool_, int) -> str: serving compares strings; index 0 is '#na#'.
    categories = {name: [str(v) for v in categorify.classes[name]] for name in dls.cat_names}
    return TabularSpec(
        cat_names=list(dls.cat_names),
        cont_names=list(dls.cont_names),
        categories=categories,
        fill_values={k: float(v) for k, v in fill.na_dict.items()} if fill is not None else {},
        means={k: float(normalize.means[k]) if normalize is not None else 0.0 for k in dls.cont_names},
        stds={k: float(normalize.stds[k]) if normalize is not None else 1.0 for k in dls.cont_names},
        y_name=dls.y_names[0],
        vocab=[] if regression else [str(v) for v in dls.vocab],
        regression=regression,
    )


# --- pictures: fastai shows tabular batches and results as DataFrames, we render them ----------


def captured_df(show):
    """Run a fastai show_* call that would `display_df` a table; return the DataFrame instead."""
    import fastai.tabular.core as core
    import fastai.tabular.learner as tab_learner

    captured = []
    saved = core.display_df, tab_learner.display_df
    core.display_df = tab_learner.display_df = captured.append
    try:
        show()
    finally:
        core.display_df, tab_learner.display_df = saved
    if not captured:
        raise RuntimeError("fastai displayed no table")
    return captured[-1]


def save_table(path: Path, df, title: str = "") -> None:
    """A DataFrame as a PNG table (fastai's show_batch/show_results for tabular data print tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df.reset_index(drop=True)
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    plt.close("all")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.35 * len(df.columns)), 0.6 + 0.32 * (len(df) + 1)))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=[str(c) for c in df.columns], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(df.columns))))
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close("all")


def decoded_valid(learn):
    """The validation rows as fastai holds them, decoded back to raw values (on a copy: decoding a
    TabularPandas works in place)."""
    valid = learn.dls.valid_ds
    return valid.new(valid.all_cols).decode().items


def results_table(learn, max_n: int):
    """fastai's show_results prints encoded columns; this shows the decoded rows, the actual label,
    the prediction and its probability."""
    preds, _ = learn.get_preds(dl=learn.dls.valid)
    dls = learn.dls
    df = decoded_valid(learn)[list(dls.cat_names) + list(dls.cont_names) + list(dls.y_names)].iloc[:max_n].copy()
    best = preds[:max_n].argmax(dim=1)
    df[f"{dls.y_names[0]}_pred"] = [str(dls.vocab[int(i)]) for i in best]
    df["probability"] = [round(float(preds[k, int(i)]), 3) for k, i in enumerate(best)]
    return df


def pictures(learn):
    from fastai.interpret import ClassificationInterpretation

    def draw(folder: Path) -> None:
        with learn.no_bar():
            save_table(folder / "show_batch.png", captured_df(lambda: learn.dls.show_batch(max_n=10)), "show_batch")
            save_table(folder / "show_results.png", results_table(learn, 12), "show_results: validation rows, actual and predicted")
            interp = ClassificationInterpretation.from_learner(learn)
            save_figure(folder / "confusion_matrix.png", lambda: interp.plot_confusion_matrix())

    return draw


def tabular_data(opts: TrainOptions):
    source = lesson_sample(opts.data, "ADULT_SAMPLE", "adult_sample", opts.cache)
    return source.path, source.source


def quick_csv(csv: Path, dest: Path, rows: int) -> Path:
    """The first `rows` data rows of the CSV, byte for byte (same parsing as the full file)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / csv.name
    with open(csv, "rb") as src, open(out, "wb") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)
    return out


def train(opts: TrainOptions) -> Path:
    prepare(opts)
    import torch

    from training.progress import log_progress

    path, source = tabular_data(opts)
    csv = path / CSV_NAME
    if not csv.is_file():
        raise SystemExit(f"{csv} is missing: the tabular recipe trains on adult.csv")
    if opts.quick:
        csv = quick_csv(csv, opts.cache / "quick" / "adult_sample", QUICK_ROWS)
        path = csv.parent
    epochs = opts.epochs or (1 if opts.quick else LESSON_EPOCHS)
    bs = opts.bs or (QUICK_BS if opts.quick else None)  # None: the lesson's (fastai's default 64)
    learn = log_progress(build_learner(csv, path, bs=bs))
    dls = learn.dls
    n_items = len(dls.train_ds) + len(dls.valid_ds)
    log.info("tabular: %d rows of %s (%s), fit_one_cycle(%d)", n_items, csv, source, epochs)

    start = time.perf_counter()
    learn.fit_one_cycle(epochs)
    seconds = time.perf_counter() - start
    valid_loss, accuracy = learn.validate()
    log.info("tabular: validation accuracy %.4f (loss %.4f) after %.0f s", accuracy, valid_loss, seconds)

    x_cat, x_cont, _ = dls.valid.one_batch()
    batch = torch.export.Dim("batch", min=1, max=65536)
    return write_bundle(
        learn,
        name="tabular",
        task="tabular-classification",
        out_root=opts.out,
        spec=spec_from_dls(dls),
        signature=OnnxSignature(["x_cat", "x_cont"], ["logits"], (x_cat[:2], x_cont[:2]), ({0: batch}, {0: batch})),
        verify_dl=dls.valid,
        activation="softmax",
        arch="TabularModel (tabular_learner defaults: layers [200, 100])",
        weights="random init (tabular_learner has no pretrained weights)",
        data=DataSummary(
            source=source, n_items=n_items, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), sha256=sha256_file(csv),
        ),
        metrics={"accuracy": float(accuracy), "valid_loss": float(valid_loss)},
        training_seconds=seconds,
        pictures=pictures(learn),
        settings={"epochs": epochs, "quick": opts.quick, "seed": opts.seed, "bs": bs or 64, "rows": n_items},
    )
