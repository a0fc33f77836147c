"""Lesson 1, collaborative filtering: `collab_learner(y_range=(0.5, 5.5))` + `fine_tune(10)` on the
MovieLens sample."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from services.bundle import CollabSpec, DataSummary, sha256_file
from training.common import TrainOptions, prepare
from training.data import lesson_sample
from training.export import OnnxSignature, write_bundle
from training.tabular import captured_df, decoded_valid, save_table

log = logging.getLogger("roost.train")

CSV_NAME = "ratings.csv"
Y_RANGE = (0.5, 5.5)
LESSON_EPOCHS = 10
ACTUAL_VS_PREDICTED = "actual_vs_predicted.csv"


def build_learner(csv: Path, bs: int | None = None):
    """Exactly the lesson's CollabDataLoaders and learner."""
    from fastai.collab import CollabDataLoaders, collab_learner

    dls = CollabDataLoaders.from_csv(csv, **({"bs": bs} if bs else {}))
    return collab_learner(dls, y_range=Y_RANGE)


def spec_from_dls(dls, ratings, y_range: tuple[float, float] = Y_RANGE) -> CollabSpec:
    """Id -> embedding index maps (index 0 '#na#') and, per user, the movies rated anywhere in the
    ratings file (train and valid): those are 'seen' and never recommended. ``ratings`` None (an
    imported learner comes without its data): nothing is seen."""
    user_name, item_name = dls.cat_names[0], dls.cat_names[1]
    classes = dls.classes
    users = [str(v) for v in classes[user_name]]
    items = [str(v) for v in classes[item_name]]
    user_index = {u: i for i, u in enumerate(users)}
    item_index = {m: i for i, m in enumerate(items)}
    seen: list[set[int]] = [set() for _ in users]
    if ratings is not None:
        for u, m in zip(ratings[user_name].astype(str), ratings[item_name].astype(str)):
            seen[user_index.get(u, 0)].add(item_index.get(m, 0))
    seen[0] = set()
    return CollabSpec(
        user_name=user_name,
        item_name=item_name,
        users=users,
        items=items,
        y_range=tuple(float(v) for v in y_range),
        rating_name=dls.y_names[0],
        seen=[sorted(s - {0}) for s in seen] if ratings is not None else [],
    )


def pictures(learn):
    def draw(folder: Path) -> None:
        import pandas as pd

        with learn.no_bar():
            save_table(folder / "show_batch.png", captured_df(lambda: learn.dls.show_batch(max_n=10)), "show_batch")
            save_table(folder / "show_results.png", captured_df(lambda: learn.show_results(max_n=10)), "show_results (rating_pred: predicted)")
            preds, targs = learn.get_preds(dl=learn.dls.valid)
        valid = decoded_valid(learn)  # ids back from indices, in the order get_preds saw them
        table = pd.DataFrame({
            learn.dls.cat_names[0]: valid[learn.dls.cat_names[0]].to_numpy(),
            learn.dls.cat_names[1]: valid[learn.dls.cat_names[1]].to_numpy(),
            "actual": targs.flatten().numpy(),
            "predicted": preds.flatten().numpy().round(4),
        })
        table.to_csv(folder / ACTUAL_VS_PREDICTED, index=False)

    return draw


def collab_data(opts: TrainOptions):
    source = lesson_sample(opts.data, "ML_SAMPLE", "movie_lens_sample", opts.cache)
    return source.path, source.source


def train(opts: TrainOptions) -> Path:
    prepare(opts)
    import pandas as pd
    import torch

    from training.progress import log_progress

    path, source = collab_data(opts)
    csv = path / CSV_NAME
    if not csv.is_file():
        raise SystemExit(f"{csv} is missing: the collab recipe trains on ratings.csv")
    epochs = opts.epochs or (1 if opts.quick else LESSON_EPOCHS)
    learn = log_progress(build_learner(csv, bs=opts.bs))
    dls = learn.dls
    n_items = len(dls.train_ds) + len(dls.valid_ds)
    log.info("collab: %d ratings in %s (%s), fine_tune(%d)", n_items, csv, source, epochs)

    start = time.perf_counter()
    learn.fine_tune(epochs)
    seconds = time.perf_counter() - start
    (valid_mse,) = learn.validate()  # the loss is MSE; the lesson shows it as valid_loss
    log.info("collab: validation MSE %.4f after %.0f s", valid_mse, seconds)

    x = dls.valid.one_batch()[0]
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    return write_bundle(
        learn,
        name="collab",
        task="collaborative-filtering",
        out_root=opts.out,
        spec=spec_from_dls(dls, pd.read_csv(csv)),
        signature=OnnxSignature(["user_item"], ["rating"], (x[:2],), ({0: batch},)),
        verify_dl=dls.valid,
        activation="none",
        arch=f"EmbeddingDotBias (collab_learner defaults: n_factors={learn.model.u_weight.embedding_dim})",
        weights="random init (collab_learner has no pretrained weights)",
        data=DataSummary(
            source=source, n_items=n_items, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), sha256=sha256_file(csv),
        ),
        metrics={"valid_mse": float(valid_mse), "valid_rmse": float(valid_mse) ** 0.5},
        training_seconds=seconds,
        pictures=pictures(learn),
        settings={"epochs": epochs, "quick": opts.quick, "seed": opts.seed, "bs": opts.bs or 64},
    )
