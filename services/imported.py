"""A learner brought by its user (`python -m training import`), served by the service of its task.

    ROOST_BUNDLE=artifacts/<name>/<version> bentoml serve services.imported:Imported
    ROOST_MODEL=<name> bentoml serve services.imported:Imported   # the newest under $ROOST_ARTIFACTS/<name>
    make serve MODEL=<name>

The bundle's manifest names the model and its task; the model is served under that name, with the
limits, batching and resources of the lesson model of its task (services/registry.py), through the
same batcher, metrics, OIP REST (/v2) and OIP gRPC as the lesson models:

- image-classification: as bird. POST /predict (multipart `image`), /predict_batch {"images": [base64]}
  -> {label, probability, probabilities}.
- image-multilabel-classification: the same requests -> {labels, probabilities}: a sigmoid per class,
  and every class whose probability passes the learner's threshold is a label (as learn.predict).
  OIP outputs `predicted` BOOL [N,C] and `probabilities` FP32 [N,C].
- semantic-segmentation: as segment (mask PNG or raw, class fractions; resized to the model's size
  and the mask back).
- tabular-classification / tabular-regression: POST /predict {"row": {...}}, /predict_batch
  {"rows": [...]}, a row's fields being the learner's own columns (categories as text or numbers,
  numbers as numbers; missing values as fastai fills them) -> {label, probability, probabilities} or
  {value}. OIP: one tensor per column -> `<y_name>` (+ `probability`, `probabilities`).
- collaborative-filtering: as collab. POST /predict [{"user", "movie"}] (the item, whatever the
  learner calls it), /recommend {"user", "n"}: an imported learner comes without its ratings file,
  so no item counts as already rated and every item may be recommended.

learner.pkl is never unpickled here unless ROOST_RUNTIME=fastai, which needs a signed bundle and
ROOST_TRUSTED_KEY (services/signing.py).
"""

import os
import sys
from pathlib import Path
from typing import Annotated, Optional, Union

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, create_model

from services import metrics
from services.bundle import BundleError, find_latest
from services.model import ModelService, RoostModel, roost_service
from services.registry import IMPORTED_SERVICE, LESSON_OF_TASK, MODELS, imported_facts, register
from services.upload import UploadedFile

TASKS = tuple(LESSON_OF_TASK)


# --- the model classes: one per task, named after the bundle -------------------------------------


class MultiLabelPrediction(BaseModel):
    labels: list[str] = Field(description="every class whose probability passes the model's threshold (maybe none)")
    probabilities: dict[str, float] = Field(description="probability of every class (sigmoid, independent)")
    model_version: str


class TabularClassPrediction(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    label: str = Field(description="the most probable class")
    probability: float = Field(ge=0, le=1, description="probability of `label`")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model_version: str


class TabularValuePrediction(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    value: float = Field(description="the predicted value")
    model_version: str


Category = Union[StrictStr, StrictInt, StrictFloat, StrictBool, None]


def _field_name(column: str, taken: set[str]) -> str:
    """A Python name for a column (pydantic fields are identifiers; the column is the alias)."""
    import re

    name = re.sub(r"\W", "_", column)
    if not name or name[0].isdigit() or name.startswith("_") or name in ("model_config", "model_fields"):
        name = f"f_{name}"
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def row_model(spec) -> type[BaseModel]:
    """A table row of this learner: its raw columns (categorical, then continuous), all optional as
    fastai fills missing values (a continuous column with no fill value is refused by the encoder)."""
    derived = {f"{c}_na" for c in spec.fill_values}
    fields, taken, example = {}, set(), {}
    for column in [c for c in spec.cat_names if c not in derived]:
        choices = [c for c in spec.categories.get(column, []) if c != "#na#"]
        example[column] = choices[0] if choices else None
        doc = f"category; one of {choices[:10]}{' ...' if len(choices) > 10 else ''}; unknown or missing: '#na#'"
        fields[_field_name(column, taken)] = (Category, Field(None, alias=column, description=doc))
    for column in spec.cont_names:
        fill = spec.fill_values.get(column)
        example[column] = round(spec.means.get(column, 0.0), 3)
        doc = "number; " + (f"missing: the training median {fill:g}" if fill is not None else "required (no missing values in training)")
        fields[_field_name(column, taken)] = (Optional[float], Field(None, alias=column, description=doc))
    config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False, json_schema_extra={"example": example})
    return create_model("Row", __config__=config, **fields)


def model_class(name: str, task: str, spec=None) -> type[RoostModel]:
    """The RoostModel that serves an imported bundle of ``task`` under ``name`` (``spec``: the bundle's
    preprocess spec; tables need it for their row type)."""
    if task in ("image-classification", "image-multilabel-classification"):
        from services.bird import BirdModel

        if task == "image-classification":
            return type("ImportedImageModel", (_SingleLabel, BirdModel), {"name": name, "demo_page": "bird"})
        return type("ImportedMultiLabelModel", (_MultiLabel, BirdModel), {"name": name, "demo_page": None})
    if task == "semantic-segmentation":
        from services.segment import SegmentModel

        return type("ImportedSegmentModel", (SegmentModel,), {"name": name, "demo_page": "segment"})
    if task in ("tabular-classification", "tabular-regression"):
        from services.tabular import TabularModel

        return type("ImportedTabularModel", (_Table, TabularModel), {"name": name, "demo_page": None, "row_model": row_model(spec)})
    if task == "collaborative-filtering":
        from services.collab import CollabModel

        return type("ImportedCollabModel", (CollabModel,), {"name": name, "demo_page": "collab"})
    raise ValueError(f"task {task!r} is not one Roost serves ({', '.join(TASKS)})")


class _SingleLabel:
    def load(self):
        super().load()
        if self.spec.multi_label:
            raise SystemExit(f"{self.bundle.path} is a multi-label classifier, not a single-label one")
        return self


class _MultiLabel:
    def load(self):
        super().load()
        if not self.spec.multi_label:
            raise SystemExit(f"{self.bundle.path} is a single-label classifier, not a multi-label one")
        return self

    def postprocess(self, logits: np.ndarray, images) -> list[MultiLabelPrediction]:
        vocab, threshold = list(self.spec.vocab), self.spec.threshold
        probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
        results = []
        for row in probs:
            labels = [c for c, p in zip(vocab, row) if p > threshold]
            for label in labels:
                metrics.PREDICTIONS.labels(self.name, label).inc()
            results.append(MultiLabelPrediction(labels=labels, probabilities=dict(zip(vocab, map(float, row))), model_version=self.version))
        return results

    def oip_outputs(self) -> list:
        from services.oip.tensors import TensorSpec

        vocab = list(self.spec.vocab)
        return [
            TensorSpec("predicted", "BOOL", (-1, len(vocab)), doc=f"class passes the threshold {self.spec.threshold:g}; order {vocab}"),
            TensorSpec("probabilities", "FP32", (-1, len(vocab)), doc=f"probability per class (sigmoid), in order {vocab}"),
        ]

    def oip_response(self, results: list[MultiLabelPrediction]) -> dict:
        from services.oip.codec import Tensor

        vocab = list(self.spec.vocab)
        probs = np.array([[r.probabilities[c] for c in vocab] for r in results], dtype=np.float32).reshape(len(results), len(vocab))
        predicted = np.array([[c in r.labels for c in vocab] for r in results], dtype=bool).reshape(len(results), len(vocab))
        return {"predicted": Tensor("predicted", "BOOL", predicted), "probabilities": Tensor("probabilities", "FP32", probs)}


class _Table:
    row_model: type[BaseModel]

    def preprocess(self, rows) -> np.ndarray:
        from services.preprocessing import InputError
        from services.tabular import _validation_field

        records = []
        for i, row in enumerate(rows):
            if not isinstance(row, self.row_model):  # dicts from another protocol: the same validation
                try:
                    row = self.row_model.model_validate(row)
                except ValidationError as exc:
                    field, msg = _validation_field(exc, i if len(rows) > 1 else None)
                    raise InputError(field, msg, status=422) from None
            records.append(row.model_dump(by_alias=True))
        if not records:
            raise InputError("rows", "is empty; send at least one row", status=422)
        return self.encoder.rows(records)

    def postprocess(self, outputs: np.ndarray, rows) -> list:
        if self.spec.regression:
            values = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)[:, 0]
            metrics.PREDICTIONS.labels(self.name, "value").inc(len(values))
            return [TabularValuePrediction(value=float(v), model_version=self.version) for v in values]
        return [
            TabularClassPrediction(label=label, probability=p, probabilities=probs, model_version=self.version)
            for label, p, probs in self.classify(outputs, self.spec.vocab)
        ]

    def oip_outputs(self) -> list:
        from services.oip.tensors import TensorSpec, classifier_outputs

        if self.spec.regression:
            return [TensorSpec(self.spec.y_name, "FP32", (-1,), doc="the predicted value")]
        return classifier_outputs(self.spec.y_name, list(self.spec.vocab))

    def oip_response(self, results: list) -> dict:
        from services.oip.codec import Tensor
        from services.oip.tensors import classifier_tensors

        y = self.spec.y_name
        if self.spec.regression:
            return {y: Tensor(y, "FP32", np.array([r.value for r in results], dtype=np.float32))}
        return classifier_tensors(y, list(self.spec.vocab), ((r.label, r.probability, r.probabilities) for r in results))


# --- the services: the lesson service's routes where the answer is the same, else their own -------


class _MultiLabelRoutes(ModelService):
    @bentoml.api(route="/predict")
    async def predict(self, image: UploadedFile) -> MultiLabelPrediction:
        """Label one uploaded image file (multipart form field `image`): every class above the threshold."""
        return (await self.model([image]))[0]

    @bentoml.api(route="/predict_batch")
    async def predict_batch(
        self,
        images: list[str] = Field(min_length=1, max_length=MODELS["bird"].max_request_rows, description="base64-encoded image files"),
    ) -> list[MultiLabelPrediction]:
        """Label several base64-encoded images in one request (they share the batch)."""
        return await self.model(images)


def _table_routes(model: type[RoostModel], regression: bool) -> type[ModelService]:
    Row = model.row_model
    Prediction = TabularValuePrediction if regression else TabularClassPrediction
    max_rows = MODELS["tabular"].max_request_rows

    class Routes(ModelService):
        @bentoml.api(route="/predict")
        async def predict(self, row: Row) -> Prediction:
            """Predict one row (the learner's columns)."""
            return (await self.model([row]))[0]

        @bentoml.api(route="/predict_batch")
        async def predict_batch(
            self, rows: list[Row] = Field(min_length=1, max_length=max_rows, description="rows of the learner's columns")
        ) -> list[Prediction]:
            """Predict several rows in one request (they share the batch)."""
            return await self.model(rows)

    return Routes


def service_class(model: type[RoostModel], task: str) -> type[ModelService]:
    """The (undecorated) BentoML service class ``Imported`` for ``model``: its routes and model."""
    if task == "image-classification":
        from services.bird import Bird

        base = Bird.inner
    elif task == "image-multilabel-classification":
        base = _MultiLabelRoutes
    elif task == "semantic-segmentation":
        from services.segment import Segment

        base = Segment.inner
    elif task == "collaborative-filtering":
        from services.collab import Collab

        base = Collab.inner
    else:
        base = _table_routes(model, task == "tabular-regression")
    return type("Imported", (base,), {"model_class": model, "__module__": __name__, "__doc__": __doc__})


# --- which bundle: resolved when `bentoml serve services.imported:Imported` asks for the service ----


def bundle_path() -> Path:
    explicit = (os.environ.get("ROOST_BUNDLE") or "").strip()
    if explicit:
        return Path(explicit)
    name = (os.environ.get("ROOST_MODEL") or "").strip()
    if not name:
        raise SystemExit(
            "services.imported serves an imported learner: set ROOST_BUNDLE=artifacts/<name>/<version> "
            "or ROOST_MODEL=<name> (make serve MODEL=<name>)"
        )
    root = Path((os.environ.get("ROOST_ARTIFACTS") or "").strip() or "artifacts")
    try:
        return find_latest(root, name)
    except BundleError:
        raise SystemExit(
            f"no bundle for '{name}' under {root / name}: run `make import LEARNER=export.pkl NAME={name} SAMPLES=...` "
            "first, or point ROOST_BUNDLE at a bundle folder"
        ) from None


def load_service():
    """Read the bundle's manifest (signature first, where one is required), register the model's
    facts under its name, and build its service. A failure in `bentoml serve` is its one line."""
    from services.bundle import open_bundle
    from services.settings import settings_for
    from services.signing import check_signature
    from services.startup import is_serve_process

    name = (os.environ.get("ROOST_MODEL") or "").strip() or "imported"
    try:
        path = bundle_path()
        from services.bundle import MANIFEST_FILE, Manifest

        manifest = Manifest.model_validate_json((path / MANIFEST_FILE).read_bytes()) if (path / MANIFEST_FILE).is_file() else None
        if manifest is None:
            raise SystemExit(f"no manifest.json in {path}: not a bundle (did the import finish?)")
        name = manifest.name
        if name in MODELS and MODELS[name].service != IMPORTED_SERVICE:
            raise SystemExit(f"{path} holds the lesson model '{name}': serve it with {MODELS[name].service} (make serve-{name})")
        register(imported_facts(name, manifest.task))
        settings = settings_for(name)
        bundle = open_bundle(path, manifest_bytes=check_signature(path, settings))  # hashes checked: the spec is the sealed one
        return roost_service(service_class(model_class(name, bundle.manifest.task, bundle.spec), bundle.manifest.task))
    except BaseException as exc:  # noqa: BLE001 - in `bentoml serve`: one line, exit 2 (services/startup.py)
        if is_serve_process():
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"roost: cannot serve '{name}': {text}", file=sys.stderr, flush=True)
            os._exit(2)
        raise


def __getattr__(attr: str):
    if attr == "Imported":
        service = globals()["Imported"] = load_service()
        return service
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
