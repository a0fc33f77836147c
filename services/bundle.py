"""The bundle: the one contract between training (writer) and serving (reader).

A bundle is a folder ``<root>/<model>/<version>/`` holding

- ``model.onnx``      the network, dynamic batch axis; what the default runtime executes. Image
                      models (format 2) take uint8 NHWC pixels and cast, scale, normalize and
                      transpose inside the graph
- ``model.int8.onnx`` image models only, and only when it passed its gate: the static-QDQ INT8 copy
                      (``Manifest.quantization`` says how it was made, or why there is none)
- ``learner.pkl``     ``learn.export()``; loaded only by the fastai runtime, after its sha256 checks out
- ``preprocess.json`` everything needed to turn a raw request into the model's tensors without fastai
- ``manifest.json``   name, version, sha256 of every other file, versions, metrics, data summary
- pictures            ``show_batch.png`` and friends, for people

Only pydantic, hashlib and json here: both sides import this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

MODEL_FILE = "model.onnx"
LEARNER_FILE = "learner.pkl"
PREPROCESS_FILE = "preprocess.json"
MANIFEST_FILE = "manifest.json"
INT8_FILE = "model.int8.onnx"
# 2: image models take uint8 NHWC pixels (cast, /255, normalize, transpose in the graph) and may carry
# model.int8.onnx. 1: image models took float32 NCHW, normalized by the server; a format-1 table
# bundle is the same as a format-2 one, so it is still read, a format-1 image bundle is refused.
BUNDLE_FORMAT = 2
READABLE_FORMATS = (1, 2)
IMAGE_INPUT = "uint8-nhwc"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or does not match its manifest."""


# --- preprocessing specs, one per kind of model ---------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Spec):
    """Single-label image classifier (bird): fastai Resize + IntToFloatTensor + Normalize."""

    kind: Literal["image"] = "image"
    height: int
    width: int
    resize_method: Literal["squish", "crop", "pad"] = "squish"
    mean: list[float] | None = None  # None: fastai added no Normalize (no pretrained stats)
    std: list[float] | None = None
    vocab: list[str]
    # Multi-label (imported learners, `python -m training import`): sigmoid per class, and every
    # class whose probability passes `threshold` is a label (fastai's BCEWithLogitsLossFlat.thresh).
    multi_label: bool = False
    threshold: float = 0.5


class SegmentationSpec(_Spec):
    """Per-pixel classifier (segment). Requests are resized to height x width, masks back."""

    kind: Literal["segmentation"] = "segmentation"
    height: int
    width: int
    mean: list[float] | None = None
    std: list[float] | None = None
    codes: list[str]
    size_multiple: int = 32  # the U-Net accepts any H, W that are multiples of this


class TabularSpec(_Spec):
    """fastai TabularPandas procs: FillMissing -> Categorify -> Normalize, in that data order."""

    kind: Literal["tabular"] = "tabular"
    cat_names: list[str]  # model order, including the FillMissing `<col>_na` columns
    cont_names: list[str]
    categories: dict[str, list[str]]  # Categorify classes per categorical column; index 0 is #na#
    fill_values: dict[str, float]  # FillMissing medians
    means: dict[str, float]
    stds: dict[str, float]
    y_name: str
    vocab: list[str]  # classes; [] for a regressor
    regression: bool = False  # imported regressors: the network's output is the value itself


class CollabSpec(_Spec):
    """Collaborative filtering: id -> embedding index maps (index 0 is #na#), output range."""

    kind: Literal["collab"] = "collab"
    user_name: str
    item_name: str
    users: list[str]
    items: list[str]
    y_range: tuple[float, float]
    rating_name: str = "rating"
    # seen[u]: item indices user index u rated in the training ratings file (never recommended).
    seen: list[list[int]] = []


PreprocessSpec = Annotated[
    Union[ImageSpec, SegmentationSpec, TabularSpec, CollabSpec], Field(discriminator="kind")
]
_spec_adapter: TypeAdapter = TypeAdapter(PreprocessSpec)


# --- the manifest ----------------------------------------------------------------------------


class TensorInfo(_Spec):
    name: str
    dtype: str
    shape: list[int | str]  # str for dynamic axes


class DataSummary(_Spec):
    source: str  # where the data came from, relative to a named root: "shared datasets: bird_or_forest"
    n_items: int
    n_train: int | None = None
    n_valid: int | None = None
    sha256: str  # hash over the item names and contents (or the data file)


class Quantization(_Spec):
    """What the export did about INT8: ``written`` (``file`` is in the bundle), ``refused`` (it failed
    its gate; ``reason`` and ``agreement`` say by how much), ``failed`` (quantization itself raised),
    or ``none`` (not offered for this kind of model: tables and embeddings are microseconds already)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    status: Literal["written", "refused", "failed", "none"]
    file: str | None = None
    reason: str = ""
    agreement: dict[str, float] = {}  # e.g. top1_agreement, fp32_error_rate, int8_error_rate, pixel_agreement
    gate: dict[str, float] = {}  # the thresholds it was held to
    calibration: dict[str, str | int | float] = {}  # split, images, source
    settings: dict[str, str | int | float | bool] = {}  # how it was quantized
    attempts: list[dict[str, str | int | float | bool | list[str]]] = []  # every candidate judged on the validation set


class Manifest(_Spec):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    format: int = BUNDLE_FORMAT
    name: str
    version: str
    created: str
    task: str
    arch: str
    weights: str  # where the initial weights came from, in words
    files: dict[str, str]  # file name -> sha256, for every other file in the bundle
    versions: dict[str, str]
    data: DataSummary
    metrics: dict[str, float]
    training_seconds: float
    onnx_inputs: list[TensorInfo]
    onnx_outputs: list[TensorInfo]
    onnx_opset: int
    export_parity: dict[str, float]  # e.g. {"max_abs_diff": 3e-7, "argmax_agreement": 1.0}
    settings: dict[str, str | int | float | bool | None] = {}
    # The training code that wrote the bundle: its git commit, and whether training/, services/ or
    # pyproject.toml differed from it. None: not known (no git checkout, or a bundle from before).
    git_commit: str | None = None
    git_dirty: bool | None = None
    # Format 2 on: image models' input ("uint8-nhwc"), and what the export did about INT8. None: an
    # older bundle, or a model with no image input.
    image_input: str | None = None
    quantization: Quantization | None = None

    def has_int8(self) -> bool:
        return bool(self.quantization and self.quantization.status == "written" and self.quantization.file in self.files)


# --- reading and writing ---------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_version(now: dt.datetime | None = None) -> str:
    """Sortable, human-readable version: UTC time of the export."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S")


def write_spec(folder: Path, spec: ImageSpec | SegmentationSpec | TabularSpec | CollabSpec) -> Path:
    path = Path(folder) / PREPROCESS_FILE
    path.write_text(spec.model_dump_json(indent=2) + "\n")
    return path


def seal(folder: Path, manifest_fields: dict) -> Manifest:
    """Hash every file in ``folder`` and write manifest.json last. Returns the manifest."""
    folder = Path(folder)
    files = {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    for required in (MODEL_FILE, LEARNER_FILE, PREPROCESS_FILE):
        if required not in files:
            raise BundleError(f"cannot seal {folder}: {required} is missing")
    manifest = Manifest(files=files, **manifest_fields)
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


class Bundle:
    """A verified bundle on disk. Construct with :func:`open_bundle`."""

    def __init__(self, path: Path, manifest: Manifest, spec):
        self.path = path
        self.manifest = manifest
        self.spec = spec

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def file(self, name: str) -> Path:
        return self.path / name

    def verify_file(self, name: str) -> Path:
        """Check one file's sha256 against the manifest now (e.g. the pickle, just before loading)."""
        path = self.path / name
        expected = self.manifest.files.get(name)
        if expected is None:
            raise BundleError(f"{name} is not listed in {self.path / MANIFEST_FILE}")
        if not path.is_file():
            raise BundleError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{path} does not match its manifest (sha256 {actual[:12]}…, expected {expected[:12]}…): "
                "refusing to use a tampered or partially written bundle"
            )
        return path

    def __repr__(self) -> str:
        return f"Bundle({self.name}:{self.version} at {self.path})"


def open_bundle(path: Path | str, verify: bool = True, manifest_bytes: bytes | None = None) -> Bundle:
    """Read manifest + spec, and (by default) check the sha256 of every listed file.
    ``manifest_bytes``: the manifest already read (and its signature checked): no second read."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if manifest_bytes is None:
        if not manifest_path.is_file():
            raise BundleError(f"no {MANIFEST_FILE} in {path}: not a bundle (did training finish?)")
        manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValueError as exc:
        raise BundleError(f"{manifest_path} is not a valid manifest ({str(exc).splitlines()[0]})") from None
    if manifest.format not in READABLE_FORMATS:
        raise BundleError(f"{path}: bundle format {manifest.format}, this server reads {list(READABLE_FORMATS)}")
    if manifest.task in ("image-classification", "semantic-segmentation") and manifest.image_input != IMAGE_INPUT:
        raise BundleError(
            f"{path}: bundle format {manifest.format} takes float32 NCHW images; this server feeds image models uint8 "
            f"NHWC pixels (bundle format {BUNDLE_FORMAT}): retrain it with `make train-{manifest.name}`"
        )
    if verify:
        for name in manifest.files:
            # A serving copy may leave out the pickle (images do): only the fastai runtime reads it, and
            # it checks it when it loads it (Bundle.verify_file says "missing" then).
            if name == LEARNER_FILE and not (path / name).exists():
                continue
            Bundle(path, manifest, None).verify_file(name)
    try:
        spec = _spec_adapter.validate_json((path / PREPROCESS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path / PREPROCESS_FILE} cannot be read ({str(exc).splitlines()[0]})") from None
    return Bundle(path, manifest, spec)


def find_latest(root: Path | str, model: str) -> Path:
    """Newest sealed version of ``model`` under ``root`` (versions sort by time)."""
    model_dir = Path(root) / model
    versions = sorted(
        p for p in model_dir.glob("*") if p.is_dir() and (p / MANIFEST_FILE).is_file()
    ) if model_dir.is_dir() else []
    if not versions:
        raise BundleError(
            f"no bundle for '{model}' under {model_dir}: run `make train-{model}` first, "
            "or point ROOST_BUNDLE at a bundle folder"
        )
    return versions[-1]


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
