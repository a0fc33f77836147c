"""The tabular service: preprocessing and answers tied to fastai on real ADULT rows (in-process), then
`bentoml serve services.tabular:Tabular` on 127.0.0.1 with real concurrent HTTP clients."""

import asyncio

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from services.errors import RoostError
from services.tabular import AdultRow
from tests.server import metric_sum
from tests.services.tabular_collab_helpers import adult_frame, call, in_process_model, request_rows

pytestmark = pytest.mark.slow

# real rows: 700-999 hold adult.csv's missing values (all of them lie in its first 1000 rows), the
# last 200 are rows the quick model (first 2000 rows) never saw
REAL_ROWS = list(range(700, 1000)) + list(range(-200, 0))

TYPICAL = {"age": 49, "workclass": "Private", "fnlwgt": 101320, "education": "Assoc-acdm", "education-num": 12.0,
           "marital-status": "Married-civ-spouse", "occupation": "Exec-managerial", "relationship": "Wife", "race": "White"}
# rows fastai has to cope with: unseen categories, missing and empty values, nothing but the required fields
HARD_ROWS = [
    TYPICAL,
    {**TYPICAL, "workclass": "Martian", "education": "PhD-in-Roosting", "race": "Unknown-race"},
    {**TYPICAL, "occupation": None, "education-num": None, "workclass": ""},
    {"age": 23, "fnlwgt": 50000},
    {**TYPICAL, "age": 90, "fnlwgt": 1_000_000, "education-num": 16.0, "relationship": None},
    {**TYPICAL, "marital-status": "Never-married", "occupation": "?", "education-num": None},
]


@pytest.fixture(scope="module")
def bundle_dir(bundle_of):
    return bundle_of("tabular")


@pytest.fixture(scope="module")
def learner(learner_of):
    return learner_of("tabular")


@pytest.fixture(scope="module")
def model(bundle_dir):
    return in_process_model("tabular", bundle_dir)


def fastai_inputs(learner, df):
    """x_cat, x_cont exactly as fastai's test_dl builds them for `df`."""
    import torch

    dl = learner.dls.test_dl(df, bs=len(df))
    x_cat, x_cont = torch.cat([b[0] for b in dl]), torch.cat([b[1] for b in dl])
    return x_cat.numpy(), x_cont.numpy()


def full(row: dict) -> dict:
    """Every ADULT column, as fastai gets it from a CSV: absent or null -> NaN."""
    return {k: (np.nan if v is None else v) for k, v in AdultRow.model_validate(row).record().items()}


def frame(rows):
    import pandas as pd

    return pd.DataFrame([full(r) for r in rows])


def test_preprocessing_matches_fastai_on_real_rows_as_the_csv_holds_them(model, learner):
    # the raw file has a space after every comma; from_csv strips them (skipinitialspace), so do we
    raw = request_rows(adult_frame(skipinitialspace=False).iloc[REAL_ROWS])
    assert raw[0]["workclass"].startswith(" ")
    assert any(r["education-num"] is None for r in raw) and any(r["occupation"] is None for r in raw)
    ours = model.preprocess([AdultRow.model_validate(r) for r in raw])
    x_cat, x_cont = fastai_inputs(learner, adult_frame().iloc[REAL_ROWS])
    n_cat = x_cat.shape[1]
    assert np.array_equal(ours[:, :n_cat].astype(np.int64), x_cat)
    assert np.abs(ours[:, n_cat:] - x_cont).max() <= 1e-6


def test_preprocessing_matches_fastai_on_unseen_and_missing_values(model, learner):
    ours = model.preprocess([AdultRow.model_validate(r) for r in HARD_ROWS])
    x_cat, x_cont = fastai_inputs(learner, frame(HARD_ROWS))
    n_cat = x_cat.shape[1]
    assert np.array_equal(ours[:, :n_cat].astype(np.int64), x_cat)
    assert np.abs(ours[:, n_cat:] - x_cont).max() <= 1e-6
    cats = model.spec.cat_names
    assert ours[1, cats.index("workclass")] == 0 and ours[1, cats.index("race")] == 0  # unseen -> '#na#'
    assert ours[2, cats.index("occupation")] == 0 and ours[2, cats.index("workclass")] == 0  # missing / empty
    na = model.spec.categories["education-num_na"]
    assert na[int(ours[2, cats.index("education-num_na")])] == "True"
    assert na[int(ours[0, cats.index("education-num_na")])] == "False"


def test_served_answers_equal_learn_predict(model, learner):
    import pandas as pd

    got = call(model, [AdultRow.model_validate(r) for r in HARD_ROWS])
    with learner.no_bar():
        for row, answer in zip(HARD_ROWS, got):
            _, label, probs = learner.predict(pd.Series(full(row)))
            assert answer.salary == learner.dls.vocab[int(label)]
            for name, p in zip(learner.dls.vocab, probs.tolist()):
                assert answer.probabilities[name] == pytest.approx(p, abs=1e-5)
            assert answer.probability == max(answer.probabilities.values())


def test_served_answers_equal_fastai_on_real_rows(model, learner):
    df = adult_frame().iloc[REAL_ROWS]
    got = call(model, [AdultRow.model_validate(r) for r in request_rows(df)])
    with learner.no_bar():
        probs, _ = learner.get_preds(dl=learner.dls.test_dl(df))
    ours = np.array([[a.probabilities[v] for v in learner.dls.vocab] for a in got])
    assert np.abs(ours - probs.numpy()).max() <= 1e-5
    assert [a.salary for a in got] == [learner.dls.vocab[i] for i in probs.argmax(1).tolist()]


def test_a_required_value_missing_is_refused_like_fastai_but_with_a_422(model, learner):
    import pandas as pd

    row = {**TYPICAL, "age": None}
    with learner.no_bar(), pytest.raises(AssertionError, match="nan values in `age`"):
        learner.predict(pd.Series(full(row)))
    with pytest.raises(RoostError) as err:
        call(model, [AdultRow.model_validate(row)])
    assert err.value.status == 422 and err.value.field == "age"
    with pytest.raises(RoostError) as err:
        call(model, [AdultRow.model_validate(TYPICAL), {"fnlwgt": 1.0}])  # dicts are validated the same way
    assert err.value.status == 422 and err.value.field == "rows[1].age"


def test_rows_take_csv_names_or_python_names_and_refuse_nonsense():
    a = AdultRow.model_validate({"education-num": 9, "marital-status": "Divorced", "age": 30})
    b = AdultRow.model_validate({"education_num": 9, "marital_status": "Divorced", "age": 30})
    assert a == b and a.record()["education-num"] == 9 and a.record()["marital-status"] == "Divorced"
    for bad, field in [({"age": -1}, "age"), ({"age": "old"}, "age"), ({"fnlwgt": -5}, "fnlwgt"),
                       ({"workclass": 7}, "workclass"), ({"hours-per-week": 200}, "hours-per-week"),
                       ({"colour": "red"}, "colour"), ({"age": float("inf")}, "age")]:
        with pytest.raises(ValidationError) as err:
            AdultRow.model_validate(bad)
        assert err.value.errors()[0]["loc"] == (field,)


# --- the real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("tabular")


def test_served_over_http_concurrently_with_fastais_answers(server, model):
    rows = request_rows(adult_frame(skipinitialspace=False).iloc[-40:]) + HARD_ROWS
    expected = call(model, [AdultRow.model_validate(r) for r in rows])
    ok = r'roost_requests_total\{[^}]*model="tabular"[^}]*outcome="ok"[^}]*\}'
    before = server.metrics()  # the server is shared: count this test's requests as a delta

    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            singles = [client.post(f"{server.url}/predict", json={"row": r}) for r in rows]
            batch = client.post(f"{server.url}/predict_batch", json={"rows": rows})
            return await asyncio.gather(*singles, batch)

    *singles, batch = asyncio.run(fire())
    assert [r.status_code for r in singles] == [200] * len(rows) and batch.status_code == 200
    for got in [r.json() for r in singles], batch.json():
        assert [g["salary"] for g in got] == [e.salary for e in expected]
        assert max(abs(g["probability"] - e.probability) for g, e in zip(got, expected)) <= 1e-5
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert metric_sum(metrics, ok) - metric_sum(before, ok) >= 1


@pytest.mark.parametrize("body, status, field", [
    ({"row": {**TYPICAL, "age": -3}}, 422, "age"),
    ({"row": {**TYPICAL, "age": "old"}}, 422, "age"),
    ({"row": {**TYPICAL, "education-num": 99}}, 422, "education-num"),
    ({"row": {**TYPICAL, "workclass": 3}}, 422, "workclass"),
    ({"row": {**TYPICAL, "favourite-bird": "robin"}}, 422, "favourite-bird"),
    ({"row": {**TYPICAL, "age": None}}, 422, "age"),
    ({"row": {"fnlwgt": 10}}, 422, "age"),
])
def test_bad_rows_get_a_4xx_naming_the_field(server, body, status, field):
    r = httpx.post(f"{server.url}/predict", json=body, timeout=30)
    assert r.status_code == status, r.text
    answer = r.json()
    named = answer.get("field") or ".".join(str(p) for p in answer["detail"][0]["loc"])
    assert named.endswith(field), answer


def test_batch_limits_and_batch_errors(server):
    r = httpx.post(f"{server.url}/predict_batch", json={"rows": []}, timeout=30)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "rows"
    r = httpx.post(f"{server.url}/predict_batch", json={"rows": [TYPICAL, {"fnlwgt": 3}]}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "rows[1].age"
    r = httpx.post(f"{server.url}/predict", content=b"not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400


def test_the_fastai_runtime_gives_the_same_answers(bundle_dir, model):
    fastai_model = in_process_model("tabular", bundle_dir, runtime="fastai")
    rows = [AdultRow.model_validate(r) for r in HARD_ROWS]
    for a, b in zip(call(model, rows), call(fastai_model, rows)):
        assert a.salary == b.salary and a.probability == pytest.approx(b.probability, abs=1e-5)
