"""Lesson 1's tabular model (ADULT: does a person earn >= 50k?) as a BentoML service.

    bentoml serve services.tabular:Tabular      # or: make serve-tabular

POST /predict        JSON {"row": AdultRow}              -> SalaryPrediction
POST /predict_batch  JSON {"rows": [AdultRow, ...]}      -> [SalaryPrediction, ...]

A row uses the column names of adult.csv ("education-num", "marital-status", ...; the underscore
spellings "education_num", ... are accepted too). Every field is optional where fastai handles a
missing value: a missing or unknown category becomes '#na#' exactly as in fastai, a missing
`education-num` takes the training median (and sets `education-num_na`). `age` and `fnlwgt` had no
missing values in training, so fastai cannot fill them: a row without them is a 422 naming the
field. Wrong types, unknown field names and impossible values (negative age, ...) fail BentoML's
request validation: 400 with `detail[].loc` naming the field (e.g. ["row", "age"]).
Columns the lesson's model does not use (sex, capital-gain, ...) are validated and ignored.
Open Inference Protocol (docs/oip.md): one tensor per raw column -> `salary`, `probability`,
`probabilities`, as TabularModel declares below.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.model import ModelService, roost_service, RoostModel
from services.oip.codec import Tensor, TensorError
from services.oip.tensors import NUMBER_TYPES, OipModel, TensorSpec, check_names, check_rows, classifier_outputs
from services.oip.tensors import classifier_tensors, elements, texts
from services.preprocessing import InputError, TabularEncoder
from services.registry import MODELS

MAX_BATCH_ROWS = MODELS["tabular"].max_request_rows

Category = Annotated[str, Field(max_length=100)]


class AdultRow(BaseModel):
    """One person, as a row of adult.csv (salary excluded); CSV or underscore names; unknown fields are refused."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, allow_inf_nan=False,
        json_schema_extra={"example": {
            "age": 49, "workclass": "Private", "fnlwgt": 101320, "education": "Assoc-acdm", "education-num": 12,
            "marital-status": "Married-civ-spouse", "occupation": None, "relationship": "Wife", "race": "White",
        }},
    )

    age: float | None = Field(None, ge=0, le=150, description="years; required by the model (no missing ages in training)")
    workclass: Category | None = None
    fnlwgt: float | None = Field(None, ge=0, description="census final weight; required by the model")
    education: Category | None = None
    education_num: float | None = Field(None, alias="education-num", ge=0, le=30, description="missing: the training median")
    marital_status: Category | None = Field(None, alias="marital-status")
    occupation: Category | None = None
    relationship: Category | None = None
    race: Category | None = None
    sex: Category | None = Field(None, description="not used by the lesson's model")
    capital_gain: float | None = Field(None, alias="capital-gain", ge=0, description="not used by the lesson's model")
    capital_loss: float | None = Field(None, alias="capital-loss", ge=0, description="not used by the lesson's model")
    hours_per_week: float | None = Field(None, alias="hours-per-week", ge=0, le=168, description="not used by the lesson's model")
    native_country: Category | None = Field(None, alias="native-country", description="not used by the lesson's model")

    def record(self) -> dict[str, object]:
        """Column name (as in adult.csv) -> raw value."""
        return self.model_dump(by_alias=True)


class SalaryPrediction(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    salary: str = Field(description="the most probable class, e.g. '<50k' or '>=50k'")
    probability: float = Field(ge=0, le=1, description="probability of `salary`")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model_version: str


def _validation_field(exc: ValidationError, index: int | None) -> tuple[str, str]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = loc if index is None else f"rows[{index}].{loc}"
    return field, err["msg"]


class TabularModel(RoostModel, OipModel):
    name = "tabular"
    spec_kind = "tabular"
    preprocess_in_thread = infer_in_thread = postprocess_in_thread = False  # microseconds each
    oip_max_rows = MAX_BATCH_ROWS

    def load(self) -> "TabularModel":
        super().load()
        self.encoder = TabularEncoder(self.spec)
        return self

    def preprocess(self, rows: list[AdultRow | dict]) -> np.ndarray:
        records = []
        for i, row in enumerate(rows):
            if not isinstance(row, AdultRow):  # e.g. dicts from another protocol: same validation
                try:
                    row = AdultRow.model_validate(row)
                except ValidationError as exc:
                    field, msg = _validation_field(exc, i if len(rows) > 1 else None)
                    raise InputError(field, msg, status=422) from None
            records.append(row.record())
        if not records:
            raise InputError("rows", "is empty; send at least one row", status=422)
        return self.encoder.rows(records)

    def postprocess(self, logits: np.ndarray, rows) -> list[SalaryPrediction]:
        return [
            SalaryPrediction(salary=label, probability=p, probabilities=probs, model_version=self.version)
            for label, p, probs in self.classify(logits, self.spec.vocab)
        ]

    # -- Open Inference Protocol: one tensor per raw column, [N] each: BYTES for categorical columns
    # (UTF-8; "" = missing), FP32 for continuous ones (FP16/FP64/INT*/UINT* accepted; NaN = missing,
    # filled as fastai does). Any column may be left out (missing in every row); preprocess still
    # refuses rows that lack a column it cannot fill (e.g. age), as for the typed API.
    # Outputs: `<y_name>` (salary) BYTES [N], `probability` FP32 [N], `probabilities` FP32 [N,C].
    def oip_inputs(self) -> list[TensorSpec]:
        s = self.spec
        derived = {f"{c}_na" for c in s.fill_values}
        cats = [c for c in s.cat_names if c not in derived]
        return [TensorSpec(c, "BYTES", (-1,), doc="category (UTF-8); empty: missing") for c in cats] + [
            TensorSpec(c, "FP32", (-1,), accepts=tuple(t for t in NUMBER_TYPES if t != "FP32"), doc="number; NaN: missing")
            for c in s.cont_names
        ]

    def oip_outputs(self) -> list[TensorSpec]:
        return classifier_outputs(self.spec.y_name, list(self.spec.vocab))

    def oip_request(self, tensors: dict[str, Tensor]) -> list[dict]:
        """Tensors -> one record (column -> raw value, None: missing) per row, validated by preprocess."""
        if not tensors:
            raise TensorError(f"no inputs; model '{self.name}' takes {list(self.oip_input_specs())}")
        check_names(self, tensors, set())
        records: list[dict] = [{} for _ in range(check_rows(self, tensors))]
        for name, tensor in tensors.items():
            if tensor.datatype == "BYTES":
                values = [value if value != "" else None for value in texts(tensor)]
            else:
                values = [None if x != x else x for x in map(float, elements(tensor))]  # NaN: missing, as in the CSV
            for record, value in zip(records, values):
                record[name] = value
        return records

    def oip_response(self, results: list[SalaryPrediction]) -> dict[str, Tensor]:
        return classifier_tensors(
            self.spec.y_name, list(self.spec.vocab), ((r.salary, r.probability, r.probabilities) for r in results)
        )


@roost_service
class Tabular(ModelService):
    model_class = TabularModel

    @bentoml.api(route="/predict")
    async def predict(self, row: AdultRow) -> SalaryPrediction:
        """Predict the salary class of one person."""
        return (await self.model([row]))[0]

    @bentoml.api(route="/predict_batch")
    async def predict_batch(
        self, rows: list[AdultRow] = Field(min_length=1, max_length=MAX_BATCH_ROWS, description="rows of adult.csv")
    ) -> list[SalaryPrediction]:
        """Predict several rows in one request (they share the batch)."""
        return await self.model(rows)
