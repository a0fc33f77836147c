"""Bring your own learner: `python -m training import PATH/export.pkl --name NAME --samples DIR_OR_CSV`.

Turns a fastai `learn.export()` file into a normal sealed bundle under `<out>/<name>/<version>/`
(model.onnx, the given learner.pkl, preprocess.json, manifest.json, a picture), served by
services/imported.py. Everything serving needs is read from the learner itself: the task (from its
model, loss and data pipeline), image size and resize method, normalization, vocabularies, the
tabular procs, the collab id maps; the shared readers are the lesson recipes' own
(training/common.normalize_stats, training/segment.mask_codes, training/tabular.spec_from_dls,
training/collab.spec_from_dls).

Proof before sealing: `learn.predict` on each of the user's samples against Roost's serving path
(services/imported.py's model: numpy/PIL preprocessing + ONNX Runtime + postprocessing): the same
label(s), mask or value, and probabilities within 1e-4. A mismatch fails the import naming the first
sample and the difference. Without samples the import refuses: preprocessing can only be proven on
real inputs.

Unpickling runs whatever code the pickle holds: only the file the user names is unpickled, and the
import says so. The server never unpickles it unless ROOST_RUNTIME=fastai (signed bundles only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("roost.import")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_SAMPLES = 64  # the proof runs learn.predict once per sample
TOLERANCE = 1e-4
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")
LESSON_MODELS = ("bird", "segment", "tabular", "collab")
OLD_FASTAI = (
    "{path} was exported by fastai < 2.8: it refers to fastcore.transform / fastcore.dispatch, which "
    "fastai 2.8 replaced, and fastai {version} (installed here) cannot load it. Roost imports learners "
    "exported by fastai >= 2.8. Either re-train with fastai >= 2.8 and learn.export() again, or, where "
    "the old fastai is installed, save the weights (torch.save(learn.model.state_dict(), 'weights.pth')), "
    "rebuild the same learner with fastai >= 2.8, load them (learn.model.load_state_dict(torch.load("
    "'weights.pth'))) and learn.export() that."
)


class ImportRefused(RuntimeError):
    """The import cannot go on: the message says why and what to do."""


# --- reading the learner --------------------------------------------------------------------------


def load_user_learner(path: Path):
    """Unpickle the one file the user named, with a clear message for what commonly goes wrong."""
    from importlib import metadata

    if not path.is_file():
        raise ImportRefused(f"{path}: no such file (the learn.export() file, e.g. export.pkl)")
    log.warning(
        "unpickling %s: a pickle runs whatever code it holds. Import only a learner you trust; this file, "
        "and no other, is unpickled (the server never unpickles it unless ROOST_RUNTIME=fastai with a signed bundle)",
        path,
    )
    import warnings

    from fastai.learner import Learner, load_learner

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = load_learner(path, cpu=True)
    except Exception as exc:  # noqa: BLE001 - each cause gets its own message below
        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "fastcore.transform" in text or "fastcore.dispatch" in text:
            raise ImportRefused(OLD_FASTAI.format(path=path, version=metadata.version("fastai"))) from None
        if isinstance(exc, (ModuleNotFoundError, AttributeError, UnboundLocalError)):
            # UnboundLocalError: fastai's load_learner swallows an ImportError it does not recognise
            raise ImportRefused(
                f"{path} refers to code that is not importable here ({first}): functions and classes the "
                "learner was built with (e.g. a custom label function) must be importable by name; define "
                "them in a module and run the import with it on PYTHONPATH"
            ) from None
        raise ImportRefused(
            f"cannot read {path} as a fastai learner ({type(exc).__name__}: {first}): is it a file written by "
            "learn.export()? It may be corrupt or truncated"
        ) from None
    if not isinstance(learn, Learner):
        raise ImportRefused(f"{path} holds a {type(learn).__module__}.{type(learn).__name__}, not a fastai Learner (learn.export())")
    return learn


def _names(fs) -> list[str]:
    return [type(t).__name__ for t in fs]


def detect_task(learn) -> str:
    """The task, from the learner's model, data pipeline and loss; refuses anything else, naming it."""
    from fastai.collab import EmbeddingDotBias, EmbeddingNN
    from fastai.data.transforms import Categorize, MultiCategorize
    from fastai.tabular.model import TabularModel

    model, dls = learn.model, learn.dls
    found = f"model {type(model).__name__}, data {type(dls).__name__}, loss {type(learn.loss_func).__name__}"
    if isinstance(model, EmbeddingNN):
        raise ImportRefused(f"found a collab_learner(use_nn=True) ({found}): Roost serves collab_learner's EmbeddingDotBias")
    if isinstance(model, EmbeddingDotBias):
        return "collaborative-filtering"
    if hasattr(dls, "procs"):  # TabularDataLoaders
        if not isinstance(model, TabularModel):
            raise ImportRefused(f"found tabular data with a {type(model).__name__} ({found}): Roost serves tabular_learner's TabularModel")
        procs = [p for p in dls.procs.fs]
        if any(isinstance(p, MultiCategorize) for p in procs):
            raise ImportRefused(f"found a multi-label tabular learner ({found}): Roost serves single-label tabular classifiers and regressors")
        if any(isinstance(p, Categorize) for p in procs):
            return "tabular-classification"
        if len(dls.y_names) != 1:
            raise ImportRefused(f"found a tabular regressor with {len(dls.y_names)} targets {list(dls.y_names)} ({found}): Roost serves one target")
        return "tabular-regression"
    if not hasattr(dls, "after_item"):
        raise ImportRefused(f"found {found}: not an image, tabular or collaborative-filtering learner")
    if "AddMaskCodes" in _names(dls.after_item.fs):
        return "semantic-segmentation"
    y_tfms = [t for pipe in getattr(dls.valid_ds, "tfms", [])[1:] for t in pipe.fs]
    if any(isinstance(t, MultiCategorize) for t in y_tfms):
        return "image-multilabel-classification"
    if any(isinstance(t, Categorize) for t in y_tfms):
        return "image-classification"
    raise ImportRefused(
        f"found {found} with targets made by {_names(y_tfms) or 'no transform'}: Roost imports single- and multi-label image "
        "classifiers, segmentation, tabular classifiers and regressors, and collaborative filtering"
    )


def image_geometry(learn, task: str) -> tuple[int | None, int | None, str]:
    """(height, width, resize method) from the learner's Resize item transform; refuses item and batch
    transforms that change validation images in a way the server does not reproduce, naming them."""
    from fastai.vision.augment import Resize

    dls = learn.dls
    height = width = None
    method = "squish"
    for t in dls.after_item.fs:
        name = type(t).__name__
        if name in ("ToTensor", "AddMaskCodes") or getattr(t, "split_idx", None) == 0:
            continue  # conversions, and transforms applied to the training set only
        if type(t) is Resize:
            width, height = (int(s) for s in t.size)  # fastai keeps (w, h)
            method = str(t.method)
            continue
        raise ImportRefused(
            f"item transform {name} changes validation images in a way Roost's server does not reproduce; "
            "Roost serves Resize(size, method='squish') (re-export the learner with item_tfms=Resize(...))"
        )
    if method != "squish":
        raise ImportRefused(
            f"Resize(method={method!r}): Roost's server reproduces only method='squish' (the lesson's); "
            "train with Resize(size, method='squish'), or ask for the crop/pad resize in services/preprocessing.py"
        )
    for t in dls.after_batch.fs:
        name = type(t).__name__
        if name in ("IntToFloatTensor", "Normalize") or getattr(t, "split_idx", None) == 0:
            continue
        if name in ("Flip", "Dihedral", "Rotate", "Zoom", "Warp", "AffineCoordTfm") and getattr(t, "size", None) is None:
            continue  # at validation an identity (the proof checks it)
        raise ImportRefused(
            f"batch transform {name} changes validation images in a way Roost's server does not reproduce; "
            "Roost serves IntToFloatTensor + Normalize (and training-only augmentation)"
        )
    if height is None and task != "semantic-segmentation":
        raise ImportRefused("the learner has no Resize item transform: images of different sizes cannot be batched; train with item_tfms=Resize(size)")
    return height, width, method


# --- samples ----------------------------------------------------------------------------------------


@dataclass
class Samples:
    source: Path
    items: list  # image files, or table rows (dicts of raw values)
    names: list[str] = field(default_factory=list)  # how each is named in messages
    frame: object = None  # the table, for learn.predict rows
    sha256: str = ""


def read_samples(path: Path | None, task: str) -> Samples:
    from services.bundle import sha256_file
    from training.data import tree_sha256

    why = (
        "the import proves that Roost's preprocessing and the ONNX model give what learn.predict gives, "
        "and preprocessing can only be proven on real inputs"
    )
    images = task.startswith("image") or task == "semantic-segmentation"
    kind = "a folder of images" if images else "a CSV file of rows"
    if path is None:
        raise ImportRefused(f"no samples: pass --samples with {kind} like the ones the model will serve ({why})")
    if not path.exists():
        raise ImportRefused(f"--samples {path}: no such file or folder ({kind} is needed: {why})")
    if images:
        if not path.is_dir():
            raise ImportRefused(f"--samples {path}: an image model needs a folder of images ({why})")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_SAMPLES]
        if not files:
            raise ImportRefused(f"no samples: {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); {why}")
        return Samples(path, files, [str(f.relative_to(path)) for f in files], sha256=tree_sha256(files, path))
    import pandas as pd

    if not path.is_file():
        raise ImportRefused(f"--samples {path}: a table model needs a CSV file of rows ({why})")
    try:
        frame = pd.read_csv(path, skipinitialspace=True).iloc[:MAX_SAMPLES]  # as TabularDataLoaders.from_csv reads
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"--samples {path}: not a readable CSV ({exc})") from None
    if frame.empty:
        raise ImportRefused(f"no samples: {path} has no rows; {why}")
    rows = [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    return Samples(path, rows, [f"row {i + 1} of {path.name}" for i in range(len(rows))], frame=frame, sha256=sha256_file(path))


def _plain(value):
    """A pandas cell as JSON would carry it: numpy scalars -> Python, NaN -> None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


# --- the spec and the ONNX signature, per task -------------------------------------------------------


def build_spec(learn, task: str, samples: Samples):
    from services.bundle import ImageSpec, SegmentationSpec
    from training.common import normalize_stats

    dls = learn.dls
    if task in ("image-classification", "image-multilabel-classification"):
        height, width, method = image_geometry(learn, task)
        mean, std = normalize_stats(dls)
        multi = task == "image-multilabel-classification"
        threshold = float(getattr(learn.loss_func, "thresh", 0.5)) if multi else 0.5
        return ImageSpec(
            height=height, width=width, resize_method=method, mean=mean, std=std,
            vocab=[str(v) for v in dls.vocab], multi_label=multi, threshold=threshold,
        )
    if task == "semantic-segmentation":
        from PIL import Image

        from training.segment import SIZE_MULTIPLE, mask_codes

        height, width, _ = image_geometry(learn, task)
        if height is None:  # the lesson's pipeline: no Resize, the model runs at the images' own size
            sizes = {Image.open(f).size for f in samples.items}
            if len(sizes) > 1:
                raise ImportRefused(
                    f"the learner has no Resize, so it segments images at their own size, and the samples have "
                    f"{len(sizes)} sizes {sorted(sizes)[:4]}: give samples of the one size the model was trained at"
                )
            width, height = sizes.pop()
        mean, std = normalize_stats(dls)
        return SegmentationSpec(height=height, width=width, mean=mean, std=std, codes=mask_codes(dls), size_multiple=SIZE_MULTIPLE)
    if task in ("tabular-classification", "tabular-regression"):
        from training.tabular import spec_from_dls

        known = {"Categorify", "FillMissing", "Normalize", "Categorize", "RegressionSetup"}
        unknown = [n for n in _names(dls.procs.fs) if n not in known]
        if unknown:
            raise ImportRefused(f"tabular procs {unknown}: Roost reproduces Categorify, FillMissing and Normalize")
        try:
            return spec_from_dls(dls, regression=task == "tabular-regression")
        except ValueError as exc:
            raise ImportRefused(str(exc)) from None
    from training.collab import spec_from_dls

    y_range = getattr(learn.model, "y_range", None)
    if y_range is None:
        raise ImportRefused(
            "found a collab_learner without y_range: Roost serves ratings within a known range "
            "(the API and the demo page state it); train with collab_learner(dls, y_range=(low, high))"
        )
    return spec_from_dls(dls, None, y_range=tuple(float(v) for v in y_range))


def onnx_signature(learn, task: str, spec, samples: Samples):
    """(signature, image_input or None) for training/export.export_onnx."""
    import torch

    from training.export import OnnxSignature

    dim = torch.export.Dim
    batch = dim("batch", min=1, max=4096)
    if task.startswith("image") or task == "semantic-segmentation":
        from training.export import ImageInput

        image_input = ImageInput(spec.mean, spec.std)
        xb = learn.dls.test_dl(samples.items[:2], bs=2).one_batch()[0]
        if xb.shape[1] != 3:
            raise ImportRefused(f"the learner's images have {xb.shape[1]} channel(s): Roost serves RGB images (PILImage)")
        example = image_input.from_batch(xb)  # uint8 NHWC, as the server feeds it
        shapes = {0: batch}
        if task == "semantic-segmentation" and spec.height % spec.size_multiple == 0 and spec.width % spec.size_multiple == 0:
            m = spec.size_multiple
            shapes = {0: batch, 1: m * dim("height_div_32", min=1, max=4096 // m), 2: m * dim("width_div_32", min=1, max=4096 // m)}
        return OnnxSignature(["image"], ["logits"], (example,), (shapes,)), image_input
    if task.startswith("tabular"):
        x_cat = torch.zeros((2, len(spec.cat_names)), dtype=torch.long)
        x_cont = torch.zeros((2, len(spec.cont_names)), dtype=torch.float32)
        out = "prediction" if spec.regression else "logits"
        return OnnxSignature(["x_cat", "x_cont"], [out], (x_cat, x_cont), ({0: batch}, {0: batch})), None
    x = torch.ones((2, 2), dtype=torch.long)
    return OnnxSignature(["user_item"], ["rating"], (x,), ({0: batch},)), None


# --- the proof ------------------------------------------------------------------------------------------


def serving_model(name: str, task: str, folder: Path):
    """The model exactly as services/imported.py serves it (runtime, preprocess, postprocess), on the
    sealed staging folder; no batcher: each sample runs alone."""
    import dataclasses

    from services.bundle import open_bundle
    from services.imported import model_class
    from services.registry import imported_facts, register
    from services.settings import settings_for

    register(imported_facts(name, task))
    settings = dataclasses.replace(settings_for(name), bundle=folder, runtime="onnx", precision="fp32", trusted_key=None)
    spec = open_bundle(folder).spec
    return model_class(name, task, spec)(settings=settings).load()


@contextlib.contextmanager
def full_decode():
    """The image services decode large JPEGs at reduced scale (draft mode, services/preprocessing.py),
    which learn.predict never does: the proof runs their path with whole decodes, so that it compares
    like with like (draft decoding's own agreement is measured by tests/services/test_large_photos.py)."""
    import services.bird
    import services.segment

    saved = services.bird.draft_size, services.segment.draft_size
    services.bird.draft_size = services.segment.draft_size = lambda spec, *margin: None
    try:
        yield
    finally:
        services.bird.draft_size, services.segment.draft_size = saved


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def table_row(learn, row):
    """A sample row for learn.predict: without a numeric target column, which fastai cannot convert
    from the one-row object frame predict builds (a class label converts; the answer never reads it)."""
    import pandas as pd

    numeric = [y for y in learn.dls.y_names if y in row.index and not isinstance(row[y], str)]
    return pd.Series(row.drop(labels=numeric).to_dict()) if numeric else row


def prove(learn, model, task: str, samples: Samples) -> dict[str, float]:
    """learn.predict vs the serving path, sample by sample; raises on the first mismatch."""
    import torch

    def t2np(t) -> np.ndarray:
        return np.asarray(t.as_subclass(torch.Tensor).detach().cpu().float().numpy() if hasattr(t, "as_subclass") else t, dtype=np.float64)

    worst = 0.0
    with learn.no_bar(), torch.no_grad(), full_decode():
        for i, (item, name) in enumerate(zip(samples.items, samples.names)):
            try:
                if task == "collaborative-filtering":  # fastai 2.8's TabularLearner.predict fails on collab rows:
                    # the steps it takes (test_dl -> get_preds), on the row twice (one row squeezes to 0-d)
                    expected = (None, None, learn.get_preds(dl=learn.dls.test_dl(samples.frame.iloc[[i, i]]))[0].reshape(-1)[0])
                else:
                    expected = learn.predict(item if samples.frame is None else table_row(learn, samples.frame.iloc[i]))
            except Exception as exc:  # noqa: BLE001
                raise ImportRefused(f"learn.predict failed on sample {name}: {type(exc).__name__}: {exc}") from None

            def fail(what: str):
                raise ImportRefused(f"proof failed on sample {name}: {what}; the bundle is not sealed")

            if task.startswith("image") or task == "semantic-segmentation":
                request = [Path(item).read_bytes()]
            elif task.startswith("tabular"):  # the learner's columns (a CSV may hold more: the target, unused ones)
                request = [{k: v for k, v in item.items() if k in model.encoder.input_names}]
            else:
                request = [{"user": item.get(model.spec.user_name), "movie": item.get(model.spec.item_name)}]
            try:
                rows = model.preprocess(request)
                out = model.run_batch(rows)
                served = model.postprocess(out, request)[0]
            except Exception as exc:  # noqa: BLE001
                raise ImportRefused(f"Roost's serving path failed on sample {name}: {type(exc).__name__}: {exc}") from None

            if task == "image-classification" or task == "tabular-classification":
                label, probs = str(model.spec.vocab[int(expected[1])]), t2np(expected[2])
                got = np.array([served.probabilities[c] for c in model.spec.vocab])
                diff = float(np.abs(probs - got).max())
                if label != served.label:
                    fail(f"learn.predict says {label!r} ({probs.max():.6f}), Roost says {served.label!r} ({served.probability:.6f})")
            elif task == "image-multilabel-classification":
                labels, probs = sorted(str(v) for v in expected[0]), t2np(expected[2])
                got = np.array([served.probabilities[c] for c in model.spec.vocab])
                diff = float(np.abs(probs - got).max())
                if labels != sorted(served.labels):
                    fail(f"learn.predict says {labels}, Roost says {sorted(served.labels)}")
            elif task == "semantic-segmentation":
                mask, probs = t2np(expected[1]).astype(np.int64), t2np(expected[2])
                logits = np.asarray(out, dtype=np.float64)[0]
                if logits.shape[1:] != mask.shape:
                    fail(f"learn.predict's mask is {mask.shape}, Roost's model output {logits.shape[1:]}")
                got_mask = logits.argmax(axis=0)
                differ = int((got_mask != mask).sum())
                diff = float(np.abs(_softmax(logits, 0) - probs).max())
                if differ:
                    fail(f"{differ} of {mask.size} mask pixels differ")
            else:  # tabular-regression, collaborative-filtering: one number
                value = float(t2np(expected[2]).reshape(-1)[0])
                got = served.value if task == "tabular-regression" else served.rating
                diff = abs(value - got) / max(1.0, abs(value))
                if diff > TOLERANCE:
                    fail(f"learn.predict says {value:.6f}, Roost says {got:.6f} (difference {abs(value - got):.2e})")
            if diff > TOLERANCE:
                fail(f"probabilities differ by {diff:.2e} (tolerance {TOLERANCE:g})")
            worst = max(worst, diff)
    return {"samples": float(len(samples.items)), "max_abs_diff": worst, "agreement": 1.0}


# --- pictures ------------------------------------------------------------------------------------------


def sample_picture(folder: Path, task: str, model, samples: Samples) -> None:
    """samples.png: the first samples with what the served model answers (images), or the rows
    with their answers (tables); nothing for collab."""
    from training.common import save_figure

    if task == "collaborative-filtering":
        return
    if task.startswith("tabular"):
        from training.tabular import save_table

        frame = samples.frame.iloc[:12].copy()
        rows = [{k: v for k, v in row.items() if k in model.encoder.input_names} for row in samples.items[:12]]
        answers = [model.postprocess(model.run_batch(model.preprocess([row])), [row])[0] for row in rows]
        frame["roost"] = [f"{a.value:.4g}" if task == "tabular-regression" else f"{a.label} ({a.probability:.2f})" for a in answers]
        save_table(folder / "samples.png", frame, "samples: what the served model answers")
        return

    def draw():
        import matplotlib.pyplot as plt
        from PIL import Image

        items = samples.items[:9]
        cols = min(3, len(items))
        rows = -(-len(items) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for ax, item, name in zip(axes.ravel(), items, samples.names):
            data = [Path(item).read_bytes()]
            answer = model.postprocess(model.run_batch(model.preprocess(data)), data)[0]
            ax.imshow(Image.open(item).convert("RGB"))
            if task == "semantic-segmentation":
                ax.imshow(answer.mask_array, alpha=0.5, cmap="tab20", interpolation="nearest")
                title = name
            elif task == "image-multilabel-classification":
                title = ", ".join(answer.labels) or "(none)"
            else:
                title = f"{answer.label} {answer.probability:.2f}"
            ax.set_title(title, fontsize=9)
        return fig

    save_figure(folder / "samples.png", draw)


# --- the import -------------------------------------------------------------------------------------------


def check_name(name: str) -> None:
    if name in LESSON_MODELS:
        raise ImportRefused(f"--name {name}: that is a lesson model's name; choose another (e.g. my-{name})")
    if not NAME_RE.fullmatch(name):
        raise ImportRefused(
            f"--name {name!r}: use lower-case letters, digits and '-', starting and ending with a letter or digit, "
            "at most 40 characters (it names the bundle folder, the metrics and the Kubernetes objects)"
        )


def import_learner(learner: Path, name: str, samples: Path | None, out: Path = Path("artifacts")) -> Path:
    """Write, prove and seal the bundle of ``learner``; returns its folder."""
    from services.bundle import (
        IMAGE_INPUT, LEARNER_FILE, MODEL_FILE, DataSummary, Quantization, seal, sha256_file, write_spec,
    )
    from training.export import OPSET, code_revision, export_onnx, library_versions, onnx_tensor_infos, open_staging, publish

    check_name(name)
    learner = Path(learner)
    if samples is None:  # before unpickling anything
        raise ImportRefused(
            "no samples: pass --samples with a folder of images or a CSV file of rows like the ones the model will "
            "serve. The import proves that Roost's preprocessing and the ONNX model give what learn.predict gives, "
            "and preprocessing can only be proven on real inputs"
        )
    learn = load_user_learner(learner)
    task = detect_task(learn)
    log.info("%s: %s (%s)", learner, task, type(learn.model).__name__)
    data = read_samples(Path(samples), task)
    spec = build_spec(learn, task, data)
    signature, image_input = onnx_signature(learn, task, spec, data)

    version, final, staging = open_staging(out, name)
    start = time.perf_counter()
    shutil.copyfile(learner, staging / LEARNER_FILE)  # the user's own file, byte for byte
    export_onnx(learn.model, signature, staging / MODEL_FILE, image_input)
    write_spec(staging, spec)
    inputs, outputs = onnx_tensor_infos(staging / MODEL_FILE)
    commit, dirty = code_revision()
    arch = getattr(learn, "arch", None)
    arch = arch if isinstance(arch, str) else getattr(arch, "__name__", None)
    fields = dict(
        name=name,
        version=version,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        task=task,
        arch=f"{type(learn.model).__name__}" + (f" ({arch})" if arch else "") + " (imported learner)",
        weights=f"imported: {learner.name} (sha256 {sha256_file(learner)[:16]}…)",
        versions=library_versions(),
        data=DataSummary(source=f"import samples: {data.source.name}", n_items=len(data.items), sha256=data.sha256),
        metrics={},
        training_seconds=0.0,
        onnx_inputs=inputs,
        onnx_outputs=outputs,
        onnx_opset=OPSET,
        export_parity={},
        settings={"imported_from": learner.name, "samples": len(data.items), "tolerance": TOLERANCE},
        git_commit=commit,
        git_dirty=dirty,
        image_input=IMAGE_INPUT if image_input is not None else None,
        quantization=Quantization(status="none", reason="not offered for imported learners"),
    )
    seal(staging, fields)  # the serving path opens sealed bundles only
    from services.registry import MODELS

    try:
        model = serving_model(name, task, staging)
        proof = prove(learn, model, task, data)
    finally:
        MODELS.pop(name, None)  # registered for the proof only: this process serves nothing
    log.info("proof, learn.predict vs Roost's serving path on %d samples: %s", len(data.items), proof)
    sample_picture(staging, task, model, data)
    seal(staging, {**fields, "export_parity": proof})
    publish(staging, final)
    log.info("bundle written: %s (%.1f s); serve it: ROOST_BUNDLE=%s make serve MODEL=%s", final, time.perf_counter() - start, final, name)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training import",
        description="Turn a fastai learn.export() file into a verified Roost bundle (unpickling it runs its code: trusted files only).",
    )
    parser.add_argument("learner", type=Path, help="the learn.export() file, e.g. export.pkl")
    parser.add_argument("--name", required=True, help="the model's name (lower-case letters, digits, '-')")
    parser.add_argument("--samples", type=Path, help="a folder of images, or a CSV of rows, like the ones it will serve (the proof runs on them)")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="bundle root (default: artifacts)")
    parser.add_argument("--cache", type=Path, default=Path(".cache"), help="FASTAI_HOME and friends")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import os

    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FASTAI_HOME", str((args.cache / "fastai").resolve()))
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        print(import_learner(args.learner, args.name, args.samples, args.out))
    except ImportRefused as exc:
        print(f"roost import: {exc}", file=sys.stderr)
        return 2
    return 0
