"""The collab service: id maps and ratings tied to fastai on real MovieLens pairs (in-process), unknown
ids, recommendations; then `bentoml serve services.collab:Collab` on 127.0.0.1 with real clients."""

import asyncio

import httpx
import numpy as np
import pandas as pd
import pytest

from services.collab import RecommendRequest, UserMovie
from services.errors import RoostError
from services.model import Preprocessed
from tests.services.tabular_collab_helpers import RATINGS_CSV, call, in_process_model

pytestmark = pytest.mark.slow

UNKNOWN_USER, UNKNOWN_MOVIE = 99_999_999, 424_242


@pytest.fixture(scope="module")
def bundle_dir(bundle_of):
    return bundle_of("collab")


@pytest.fixture(scope="module")
def learner(learner_of):
    return learner_of("collab")


@pytest.fixture(scope="module")
def model(bundle_dir):
    return in_process_model("collab", bundle_dir)


@pytest.fixture(scope="module")
def pairs():
    """300 real pairs, then unknown user, unknown movie, both unknown."""
    ratings = pd.read_csv(RATINGS_CSV)
    real = ratings.sample(300, random_state=0)
    user, movie = int(real.userId.iloc[0]), int(real.movieId.iloc[0])
    extra = pd.DataFrame({"userId": [UNKNOWN_USER, user, UNKNOWN_USER], "movieId": [movie, UNKNOWN_MOVIE, UNKNOWN_MOVIE]})
    return pd.concat([real[["userId", "movieId"]], extra], ignore_index=True)


def fastai_ratings(learner, df: pd.DataFrame):
    """(x, ratings) as fastai's own test_dl + get_preds make them for (userId, movieId) rows."""
    import torch

    dl = learner.dls.test_dl(df)
    x = torch.cat([b[0] for b in dl]).numpy()
    with learner.no_bar():
        preds, _ = learner.get_preds(dl=dl)
    return x, preds.reshape(-1).numpy()


def requests_of(df):
    return [UserMovie(user=int(u), movie=int(m)) for u, m in zip(df.userId, df.movieId)]


def test_id_maps_match_fastai_including_unknown_ids(model, learner, pairs):
    x, _ = fastai_ratings(learner, pairs)
    ours = model.preprocess(requests_of(pairs))
    assert ours.dtype == np.int64 and np.array_equal(ours, x)
    assert ours[-3].tolist()[0] == 0 and ours[-2].tolist()[1] == 0 and ours[-1].tolist() == [0, 0]  # -> '#na#'


def test_served_ratings_equal_fastai_and_unknown_ids_are_flagged(model, learner, pairs):
    _, expected = fastai_ratings(learner, pairs)
    got = call(model, requests_of(pairs))
    assert np.abs(np.array([g.rating for g in got]) - expected).max() <= 1e-5
    assert all(0.5 <= g.rating <= 5.5 for g in got)
    assert [g.cold_start for g in got] == [False] * (len(pairs) - 3) + [True] * 3
    assert [g.unknown for g in got[-3:]] == [["user"], ["movie"], ["user", "movie"]]
    assert (got[0].user, got[0].movie) == (int(pairs.userId[0]), int(pairs.movieId[0]))


def test_ids_match_by_text_and_dicts_are_validated(model):
    a, b = call(model, [UserMovie(user=73, movie=1097), UserMovie(user="73", movie="1097")])
    assert a.rating == b.rating and not a.cold_start and not b.cold_start
    with pytest.raises(RoostError) as err:
        call(model, [{"user": 73, "movie": 1097}, {"user": 1.5, "movie": 3}])
    assert err.value.status == 422 and err.value.field.startswith("pairs[1].user")


def test_preprocessed_rows_are_answered_without_ids(model):
    got = call(model, Preprocessed(np.array([[1, 1], [2, 3]], dtype=np.int64)))
    assert len(got) == 2 and got[0].user is None and not got[0].cold_start


def test_recommend_returns_the_best_unseen_movies(model, learner):
    ratings = pd.read_csv(RATINGS_CSV)
    user = int(ratings.userId.value_counts().index[-1])  # the user with the fewest ratings: most candidates
    seen = set(ratings.movieId[ratings.userId == user])
    unseen = [int(m) for m in model.spec.items[1:] if int(m) not in seen]
    _, predicted = fastai_ratings(learner, pd.DataFrame({"userId": [user] * len(unseen), "movieId": unseen}))
    best = [unseen[i] for i in np.argsort(-predicted, kind="stable")[:5]]
    got = call(model, RecommendRequest(user=user, n=5))
    assert got.user == user and [r.movie for r in got.recommendations] == best
    assert not seen & {r.movie for r in got.recommendations}
    scores = [r.rating for r in got.recommendations]
    assert scores == sorted(scores, reverse=True)
    assert np.abs(np.array(scores) - np.sort(predicted)[::-1][:5]).max() <= 1e-5
    everything = call(model, RecommendRequest(user=user, n=1000))
    assert len(everything.recommendations) == len(unseen)  # fewer than n: all that is left


def test_recommend_for_an_unknown_user_is_a_404_naming_it(model):
    with pytest.raises(RoostError) as err:
        call(model, RecommendRequest(user=UNKNOWN_USER, n=3))
    assert err.value.status == 404 and err.value.field == "user" and str(UNKNOWN_USER) in err.value.message


# --- the real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("collab")


def test_served_over_http_concurrently(server, model, pairs):
    chunks = [pairs.iloc[i:i + 10] for i in range(0, len(pairs), 10)]
    expected = [call(model, requests_of(c)) for c in chunks]
    users = [int(u) for u in pairs.userId.iloc[:8]]

    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            predicts = [client.post(f"{server.url}/predict", json={"pairs": [{"user": int(u), "movie": int(m)} for u, m in zip(c.userId, c.movieId)]})
                        for c in chunks]
            recommends = [client.post(f"{server.url}/recommend", json={"user": u, "n": 4}) for u in users]
            return await asyncio.gather(*predicts, *recommends)

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses if r.status_code != 200][:2]
    for r, exp in zip(responses, expected):
        got = r.json()
        assert [g["cold_start"] for g in got] == [e.cold_start for e in exp]
        assert max(abs(g["rating"] - e.rating) for g, e in zip(got, exp)) <= 1e-5
    for r, user in zip(responses[len(chunks):], users):
        answer = r.json()
        assert answer["user"] == user and len(answer["recommendations"]) == 4
        assert answer == call(model, RecommendRequest(user=user, n=4)).model_dump()


@pytest.mark.parametrize("route, body, status, field", [
    ("/predict", {"pairs": [{"user": 1.5, "movie": 1097}]}, 422, "user"),
    ("/predict", {"pairs": [{"user": 73}]}, 422, "movie"),
    ("/predict", {"pairs": [{"user": 73, "movie": 1097, "stars": 5}]}, 422, "stars"),
    ("/predict", {"pairs": []}, 422, "pairs"),
    ("/recommend", {"user": 73, "n": 0}, 422, "n"),
    ("/recommend", {"user": UNKNOWN_USER, "n": 3}, 404, "user"),
])
def test_bad_requests_get_a_4xx_naming_the_field(server, route, body, status, field):
    r = httpx.post(f"{server.url}{route}", json=body, timeout=30)
    assert r.status_code == status, r.text
    answer = r.json()
    named = answer.get("field") or [str(p) for p in answer["detail"][0]["loc"]]
    assert field in named, answer


def test_the_fastai_runtime_gives_the_same_answers(bundle_dir, model, pairs):
    fastai_model = in_process_model("collab", bundle_dir, runtime="fastai")
    for chunk in (pairs.iloc[:1], pairs):  # one row too: the network squeezes its bias terms
        a, b = call(model, requests_of(chunk)), call(fastai_model, requests_of(chunk))
        assert max(abs(x.rating - y.rating) for x, y in zip(a, b)) <= 1e-5
