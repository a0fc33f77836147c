"""Lesson 1's "Is it a bird?" classifier as a BentoML service.

    bentoml serve services.bird:Bird      # or: make serve-bird

POST /predict        multipart file field `image`          -> BirdPrediction
POST /predict_batch  JSON {"images": [<base64 image>, ...]} -> [BirdPrediction, ...]
"""

from __future__ import annotations

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from services.model import ModelService, roost_service, RoostModel
from services.preprocessing import decode_base64, decode_image, image_tensor
from services.registry import MODELS
from services.upload import UploadedFile

MAX_BATCH_ITEMS = MODELS["bird"].max_request_rows


class BirdPrediction(BaseModel):
    label: str = Field(description="the most probable class, e.g. 'bird' or 'forest'")
    probability: float = Field(ge=0, le=1, description="probability of `label`")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model_version: str


class BirdModel(RoostModel):
    name = "bird"
    spec_kind = "image"

    def preprocess(self, images: list[bytes | str]) -> np.ndarray:
        rows = []
        for i, item in enumerate(images):
            field = "image" if len(images) == 1 and isinstance(item, bytes) else f"images[{i}]"
            data = decode_base64(item, field) if isinstance(item, str) else item
            rows.append(image_tensor(decode_image(data, field), self.spec))
        return np.stack(rows)

    def postprocess(self, logits: np.ndarray, images) -> list[BirdPrediction]:
        return [
            BirdPrediction(label=label, probability=p, probabilities=probs, model_version=self.version)
            for label, p, probs in self.classify(logits, self.spec.vocab)
        ]


@roost_service
class Bird(ModelService):
    model_class = BirdModel

    @bentoml.api(route="/predict")
    async def predict(self, image: UploadedFile) -> BirdPrediction:
        """Classify one uploaded image file (multipart form field `image`)."""
        return (await self.model([image]))[0]

    @bentoml.api(route="/predict_batch")
    async def predict_batch(
        self, images: list[str] = Field(min_length=1, max_length=MAX_BATCH_ITEMS, description="base64-encoded image files")
    ) -> list[BirdPrediction]:
        """Classify several base64-encoded images in one request (they share the batch)."""
        return await self.model(images)
