"""Lesson 1's collaborative-filtering model (MovieLens sample) as a BentoML service.

    bentoml serve services.collab:Collab      # or: make serve-collab

POST /predict    JSON {"pairs": [{"user": 73, "movie": 1097}, ...]} -> [RatingPrediction, ...] (in y_range)
POST /recommend  JSON {"user": 73, "n": 10}              -> Recommendations: the n best movies the
                 user has not rated in the training ratings, best first, with predicted ratings

Ids are those of ratings.csv (userId, movieId), matched by their text (73 and "73" are the same).

Unknown ids (documented behaviour):
- /predict answers every pair. A user or movie the model never saw is mapped to fastai's '#na#'
  embedding, exactly as `learn.dls.test_dl` does, so the rating equals fastai's; the answer flags it
  with `cold_start: true` and lists `unknown: ["user"]`, `["movie"]` or both. In effect the rating
  is a popularity fallback: the known side's bias (the '#na#' row contributes almost nothing).
- /recommend for an unknown user answers 404 `{"error": "user '<id>' is not known ...", "field": "user"}`.
Nothing unknown ever reaches ONNX Runtime as an out-of-range index.

Open Inference Protocol (docs/oip.md): `user`, `movie` [N] -> `rating`, `cold_start`, as
CollabModel declares below.
"""

from __future__ import annotations

from typing import Annotated, Union

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from services import metrics
from services.errors import NotFound
from services.model import ModelService, roost_service, RoostModel
from services.oip.codec import INTEGER_TYPES, Tensor
from services.oip.tensors import OipModel, TensorSpec, check_names, check_rows, elements, texts
from services.preprocessing import CollabIndex, InputError
from services.registry import MODELS

MAX_PAIRS = MODELS["collab"].max_request_rows
MAX_RECOMMEND = 1000

Id = Union[StrictInt, Annotated[StrictStr, Field(min_length=1, max_length=64)]]


class UserMovie(BaseModel):
    """One (user, movie) pair to rate."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"user": 73, "movie": 1097}})

    user: Id = Field(description="userId as in ratings.csv")
    movie: Id = Field(description="movieId as in ratings.csv")


class RatingPrediction(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    user: Id | None = Field(None, description="the request's user (None for pre-processed rows)")
    movie: Id | None = Field(None, description="the request's movie (None for pre-processed rows)")
    rating: float = Field(description="predicted rating, within the model's y_range (0.5 to 5.5)")
    cold_start: bool = Field(False, description="the user or the movie is unknown: a fallback rating")
    unknown: list[str] = Field(default_factory=list, description="which ids are unknown: 'user', 'movie'")
    model_version: str


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Id
    n: int = Field(10, ge=1, le=MAX_RECOMMEND)


class Recommendation(BaseModel):
    movie: Id = Field(description="movieId as in ratings.csv")
    rating: float


def _id_out(text: str) -> int | str:
    """An id from the spec (text) as the client wrote it in ratings.csv: an int where it is one."""
    return int(text) if text.isdigit() and str(int(text)) == text else text


class Recommendations(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    user: Id
    recommendations: list[Recommendation] = Field(description="best first; at most n, fewer if the user has rated almost every movie")
    model_version: str


class CollabModel(RoostModel, OipModel):
    """Requests: a list of UserMovie pairs (the typed /predict, and every other protocol), or one
    RecommendRequest (rates every unseen movie for the user, through the same batcher)."""

    name = "collab"
    spec_kind = "collab"
    preprocess_in_thread = infer_in_thread = postprocess_in_thread = False  # microseconds each
    oip_max_rows = MAX_PAIRS

    def load(self) -> "CollabModel":
        super().load()
        self.index = CollabIndex(self.spec)
        return self

    def _pairs(self, pairs: list) -> list[UserMovie]:
        checked = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, UserMovie):  # dicts from another protocol: the same validation
                try:
                    pair = UserMovie.model_validate(pair)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    loc = ".".join(str(p) for p in err["loc"])
                    raise InputError(f"pairs[{i}].{loc}" if loc else f"pairs[{i}]", err["msg"], status=422) from None
            checked.append(pair)
        return checked

    def _known_user(self, request: RecommendRequest) -> int:
        user = self.index.user(request.user)
        if user == 0:
            raise NotFound(f"user {str(request.user)!r} is not known to the model (no ratings in its training data)", field="user")
        return user

    def preprocess(self, request) -> np.ndarray:
        if isinstance(request, RecommendRequest):
            user = self._known_user(request)
            items = self.index.unseen(user)
            if len(items) == 0:  # nothing left to recommend: one harmless row keeps the path uniform
                items = np.array([0], dtype=np.int64)
            return np.stack([np.full(len(items), user, dtype=np.int64), items], axis=1)
        pairs = self._pairs(list(request))
        if not pairs:
            raise InputError("pairs", "is empty; send at least one {user, movie} pair", status=422)
        return self.index.rows([(p.user, p.movie) for p in pairs])

    def postprocess(self, ratings: np.ndarray, request):
        ratings = np.asarray(ratings, dtype=np.float64).reshape(-1)
        if isinstance(request, RecommendRequest):
            user = self.index.user(request.user)
            items = self.index.unseen(user)
            order = np.argsort(-ratings[: len(items)], kind="stable")[: request.n]
            metrics.PREDICTIONS.labels(self.name, "recommend").inc()
            return Recommendations(
                user=request.user,
                recommendations=[Recommendation(movie=_id_out(self.spec.items[int(items[k])]), rating=float(ratings[k])) for k in order],
                model_version=self.version,
            )
        results = []
        for pair, rating in zip(request, ratings):
            unknown = []
            if isinstance(pair, (UserMovie, dict)):
                user, movie = (pair.user, pair.movie) if isinstance(pair, UserMovie) else (pair.get("user"), pair.get("movie"))
                unknown = [side for side, index in (("user", self.index.user(user)), ("movie", self.index.item(movie))) if index == 0]
            else:  # pre-processed rows (e.g. OIP index tensors): no ids to echo
                user = movie = None
            metrics.PREDICTIONS.labels(self.name, "cold_start" if unknown else "rating").inc()
            results.append(
                RatingPrediction(
                    user=user, movie=movie, rating=float(rating), cold_start=bool(unknown), unknown=unknown,
                    model_version=self.version,
                )
            )
        return results

    # -- Open Inference Protocol: `user` and `movie`, [N] each, INT64 (other integer types accepted)
    # or BYTES (ids as text, as in ratings.csv) -> `rating` FP32 [N] (within y_range), `cold_start`
    # BOOL [N] (user or movie unknown to the model: a fallback rating).
    def oip_inputs(self) -> list[TensorSpec]:
        others = tuple(sorted((INTEGER_TYPES - {"INT64"}) | {"BYTES"}))
        return [
            TensorSpec("user", "INT64", (-1,), accepts=others, doc="userId (INT64, or BYTES text)"),
            TensorSpec("movie", "INT64", (-1,), accepts=others, doc="movieId (INT64, or BYTES text)"),
        ]

    def oip_outputs(self) -> list[TensorSpec]:
        low, high = self.spec.y_range
        return [
            TensorSpec("rating", "FP32", (-1,), doc=f"predicted rating, within [{low}, {high}]"),
            TensorSpec("cold_start", "BOOL", (-1,), doc="user or movie unknown to the model: a fallback rating"),
        ]

    def oip_request(self, tensors: dict[str, Tensor]) -> list[dict]:
        check_names(self, tensors)
        check_rows(self, tensors)

        def ids(tensor: Tensor) -> list:
            return texts(tensor) if tensor.datatype == "BYTES" else [int(v) for v in elements(tensor)]

        return [{"user": u, "movie": m} for u, m in zip(ids(tensors["user"]), ids(tensors["movie"]))]

    def oip_response(self, results: list[RatingPrediction]) -> dict[str, Tensor]:
        return {
            "rating": Tensor("rating", "FP32", np.array([r.rating for r in results], dtype=np.float32)),
            "cold_start": Tensor("cold_start", "BOOL", np.array([r.cold_start for r in results], dtype=bool)),
        }


@roost_service
class Collab(ModelService):
    model_class = CollabModel

    @bentoml.api(route="/predict")
    async def predict(
        self, pairs: list[UserMovie] = Field(min_length=1, max_length=MAX_PAIRS, description="(user, movie) pairs")
    ) -> list[RatingPrediction]:
        """Predict ratings for (user, movie) pairs."""
        return await self.model(pairs)

    @bentoml.api(route="/recommend")
    async def recommend(self, user: Id, n: int = Field(10, ge=1, le=MAX_RECOMMEND)) -> Recommendations:
        """The n movies with the highest predicted rating among those `user` has not rated."""
        return await self.model(RecommendRequest(user=user, n=n))
