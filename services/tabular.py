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
"""

from __future__ import annotations

from typing import Annotated

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.model import ModelService, roost_service, RoostModel
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


class TabularModel(RoostModel):
    name = "tabular"
    spec_kind = "tabular"
    stages_in_thread = False

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
