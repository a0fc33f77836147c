"""Lesson 1, "Is it a bird?": vision_learner + fine_tune on bird vs forest photos."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from services.bundle import DataSummary, ImageSpec
from training.backbone import choose_backbone
from training.common import TrainOptions, int8_plan, normalize_stats, prepare, save_figure
from training.data import bird_data, subset_per_label, tree_sha256
from training.export import ImageInput, OnnxSignature, write_bundle

log = logging.getLogger("roost.train")

LESSON_SIZE, LESSON_EPOCHS = 192, 3
QUICK_SIZE, QUICK_PER_LABEL, QUICK_BS = 96, 40, 16


def build_learner(path: Path, size: int, backbone, bs: int = 32):
    """Exactly the lesson's DataBlock and learner."""
    from fastai.vision.all import (
        CategoryBlock, DataBlock, ImageBlock, RandomSplitter, Resize, error_rate, get_image_files,
        parent_label, vision_learner,
    )

    dls = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=RandomSplitter(valid_pct=0.2, seed=42),
        get_y=parent_label,
        item_tfms=[Resize(size, method="squish")],
    ).dataloaders(path, bs=bs)
    return vision_learner(dls, backbone.arch, metrics=error_rate, pretrained=backbone.pretrained, **backbone.learner_kwargs)


def pictures(learn):
    from fastai.interpret import ClassificationInterpretation

    def draw(folder: Path) -> None:
        save_figure(folder / "show_batch.png", lambda: learn.dls.show_batch(max_n=9))
        interp = ClassificationInterpretation.from_learner(learn)
        save_figure(folder / "confusion_matrix.png", lambda: interp.plot_confusion_matrix())
        save_figure(folder / "top_losses.png", lambda: interp.plot_top_losses(min(6, len(learn.dls.valid_ds))))

    return draw


def train(opts: TrainOptions) -> Path:
    prepare(opts)
    import torch
    from fastai.vision.all import get_image_files

    from training.progress import log_progress

    source = bird_data(opts.data, opts.cache)
    path = source.path
    if opts.quick:
        path = subset_per_label(path, opts.cache / "quick" / path.name, QUICK_PER_LABEL)
    size = opts.size or (QUICK_SIZE if opts.quick else LESSON_SIZE)
    epochs = opts.epochs or (1 if opts.quick else LESSON_EPOCHS)
    files = get_image_files(path)
    log.info("bird: %d images in %s (%s), size %d, fine_tune(%d)", len(files), path, source.source, size, epochs)

    backbone = choose_backbone(opts.arch or "resnet18", opts.pretrained, opts.cache)
    bs = opts.bs or (QUICK_BS if opts.quick else 32)
    learn = log_progress(build_learner(path, size, backbone, bs=bs))
    start = time.perf_counter()
    learn.fine_tune(epochs)
    seconds = time.perf_counter() - start
    valid_loss, error = learn.validate()
    log.info("bird: validation error rate %.4f (loss %.4f) after %.0f s", error, valid_loss, seconds)

    dls = learn.dls
    mean, std = normalize_stats(dls)
    spec = ImageSpec(height=size, width=size, resize_method="squish", mean=mean, std=std, vocab=[str(v) for v in dls.vocab])
    image_input = ImageInput(mean, std)  # the graph takes uint8 NHWC pixels
    example = image_input.from_batch(dls.valid.one_batch()[0][:2])
    batch = torch.export.Dim("batch", min=1, max=4096)
    return write_bundle(
        learn,
        name="bird",
        task="image-classification",
        out_root=opts.out,
        spec=spec,
        signature=OnnxSignature(["image"], ["logits"], (example,), ({0: batch},)),
        verify_dl=dls.valid,
        activation="softmax",
        arch=backbone.arch_name,
        weights=backbone.weights,
        data=DataSummary(
            source=source.source, n_items=len(files), n_train=len(dls.train_ds), n_valid=len(dls.valid_ds),
            sha256=tree_sha256(list(files), path),
        ),
        metrics={"error_rate": float(error), "valid_loss": float(valid_loss)},
        training_seconds=seconds,
        pictures=pictures(learn),
        settings={"size": size, "epochs": epochs, "quick": opts.quick, "seed": opts.seed, "bs": bs},
        image_input=image_input,
        int8=int8_plan(opts, dls.train_ds.items, "image-classification"),
    )
