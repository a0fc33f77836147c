"""Lesson 1's "Is it a bird?" classifier as a BentoML service.

    bentoml serve services.bird:Bird      # or: make serve-bird

POST /predict        multipart file field `image`          -> BirdPrediction
POST /predict_batch  JSON {"images": [<base64 image>, ...]} -> [BirdPrediction, ...]
Open Inference Protocol (docs/oip.md): `image` BYTES [N] or `pixels` UINT8 [N,H,W,3] -> `label`,
`probability`, `probabilities`, as BirdModel declares below.
"""

from __future__ import annotations

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from services.model import ModelService, Preprocessed, roost_service, RoostModel
from services.oip.codec import Tensor
from services.oip.tensors import OipModel, check_pixels, classifier_outputs, classifier_tensors, elements
from services.oip.tensors import image_inputs, image_or_pixels
from services.preprocessing import PixelBudget, decode_base64, decode_image, draft_size, image_pixels
from services.registry import MODELS
from services.upload import UploadedFile

MAX_BATCH_ITEMS = MODELS["bird"].max_request_rows


class BirdPrediction(BaseModel):
    label: str = Field(description="the most probable class, e.g. 'bird' or 'forest'")
    probability: float = Field(ge=0, le=1, description="probability of `label`")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model_version: str


class BirdModel(RoostModel, OipModel):
    name = "bird"
    spec_kind = "image"
    postprocess_in_thread = False  # a softmax over the classes
    oip_max_rows = MAX_BATCH_ITEMS  # as /predict_batch

    def preprocess(self, images: list[bytes | str]) -> np.ndarray:
        """Images -> uint8 [N, H, W, 3] (the graph casts, scales and normalizes); large JPEGs are
        decoded at reduced scale (services/preprocessing.py: draft mode)."""
        rows, budget, draft = [], PixelBudget(self.settings.max_request_pixels), draft_size(self.spec)
        for i, item in enumerate(images):
            field = "image" if len(images) == 1 and isinstance(item, bytes) else f"images[{i}]"
            data = decode_base64(item, field) if isinstance(item, str) else item
            rows.append(image_pixels(decode_image(data, field, budget, draft), self.spec))
        return np.stack(rows)

    def postprocess(self, logits: np.ndarray, images) -> list[BirdPrediction]:
        return [
            BirdPrediction(label=label, probability=p, probabilities=probs, model_version=self.version)
            for label, p, probs in self.classify(logits, self.spec.vocab)
        ]

    # -- Open Inference Protocol: `image` BYTES [N] (encoded files; base64 strings in JSON) or `pixels`
    # UINT8 [N,H,W,3] (already resized RGB) -> `label` BYTES [N], `probability` FP32 [N]
    # (of the label), `probabilities` FP32 [N,C] in vocabulary order.
    def oip_inputs(self) -> list:
        return image_inputs(self.spec, "encoded image files (JPEG, PNG, ...), one per row; base64 strings in JSON")

    def oip_outputs(self) -> list:
        return classifier_outputs("label", list(self.spec.vocab))

    def oip_request(self, tensors: dict[str, Tensor]) -> list | Preprocessed:
        image_or_pixels(self, tensors)
        if "image" in tensors:
            return elements(tensors["image"])
        return Preprocessed(check_pixels(tensors["pixels"]))

    def oip_response(self, results: list[BirdPrediction]) -> dict[str, Tensor]:
        rows = [(r.label, r.probability, r.probabilities) for r in results]
        return classifier_tensors("label", list(self.spec.vocab), rows)


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
