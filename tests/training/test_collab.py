"""The collab recipe, run for real in quick mode on the MovieLens sample (untar_data's offline copy)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from services.bundle import open_bundle
from tests.services.tabular_collab_helpers import RATINGS_CSV
from training.collab import ACTUAL_VS_PREDICTED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle_dir(bundle_of):
    return bundle_of("collab")


@pytest.fixture(scope="module")
def learner(learner_of):
    return learner_of("collab")


def test_quick_training_writes_a_sealed_verified_bundle(bundle_dir):
    bundle = open_bundle(bundle_dir)
    m = bundle.manifest
    assert m.name == "collab" and m.task == "collaborative-filtering"
    assert {"model.onnx", "learner.pkl", "preprocess.json", "show_batch.png", "show_results.png", ACTUAL_VS_PREDICTED} <= set(m.files)
    for picture in ("show_batch.png", "show_results.png"):
        with Image.open(bundle_dir / picture) as im:
            assert im.width > 100 and im.height > 100
    table = pd.read_csv(bundle_dir / ACTUAL_VS_PREDICTED)
    assert list(table.columns) == ["userId", "movieId", "actual", "predicted"] and len(table) == m.data.n_valid
    assert table["predicted"].between(0.5, 5.5).all() and table["actual"].between(0.5, 5.0).all()
    assert m.export_parity["max_abs_diff"] <= 1e-4 and m.export_parity["rows"] == m.data.n_valid
    assert m.metrics["valid_mse"] > 0 and m.metrics["valid_rmse"] == pytest.approx(m.metrics["valid_mse"] ** 0.5)
    # the manifest's MSE is the validation set's: recompute it from the CSV (rounded to 4 places)
    assert ((table["actual"] - table["predicted"]) ** 2).mean() == pytest.approx(m.metrics["valid_mse"], abs=1e-3)
    assert m.data.n_items == len(pd.read_csv(RATINGS_CSV)) and m.data.n_train + m.data.n_valid == m.data.n_items
    assert "untar_data(https://s3.amazonaws.com/fast-ai-sample/movie_lens_sample.tgz)" in m.data.source
    (inp,), (out,) = m.onnx_inputs, m.onnx_outputs
    assert (inp.name, inp.dtype, inp.shape) == ("user_item", "int64", ["batch", 2])
    assert (out.name, out.shape) == ("rating", ["batch"])


def test_the_learner_is_the_lessons_recipe(learner):
    from fastai.collab import EmbeddingDotBias

    assert isinstance(learner.model, EmbeddingDotBias) and learner.model.y_range == (0.5, 5.5)
    assert list(learner.dls.cat_names) == ["userId", "movieId"] and list(learner.dls.y_names) == ["rating"]


def test_spec_maps_ids_and_knows_what_each_user_has_seen(bundle_dir, learner):
    spec = open_bundle(bundle_dir).spec
    assert spec.user_name == "userId" and spec.item_name == "movieId" and spec.rating_name == "rating"
    assert spec.users == [str(v) for v in learner.dls.classes["userId"]] and spec.users[0] == "#na#"
    assert spec.items == [str(v) for v in learner.dls.classes["movieId"]] and spec.items[0] == "#na#"
    assert tuple(spec.y_range) == (0.5, 5.5)
    ratings = pd.read_csv(RATINGS_CSV)
    users, items = {u: i for i, u in enumerate(spec.users)}, {m: i for i, m in enumerate(spec.items)}
    expected = [set() for _ in spec.users]
    for u, mv in zip(ratings.userId.astype(str), ratings.movieId.astype(str)):
        expected[users[u]].add(items[mv])
    assert [set(s) for s in spec.seen] == expected
    assert sum(len(s) for s in spec.seen) == len(ratings.drop_duplicates(["userId", "movieId"]))


def test_onnx_takes_any_batch_and_matches_the_pickle(bundle_dir, learner):
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    model = learner.model.eval()
    rng = np.random.default_rng(0)
    n_users, n_items = model.u_weight.num_embeddings, model.i_weight.num_embeddings
    for n in (1, 2, 1000):
        x = np.stack([rng.integers(0, n_users, n), rng.integers(0, n_items, n)], axis=1).astype(np.int64)
        got = session.run(None, {"user_item": x})[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).reshape(-1).numpy()
        assert got.shape == (n,)
        assert np.abs(got - expected).max() <= 1e-5
        assert ((got >= 0.5) & (got <= 5.5)).all()
