"""The tabular recipe, run for real in quick mode on ADULT (through untar_data's offline copy)."""

import numpy as np
import pytest
from PIL import Image

from services.bundle import open_bundle
from training.tabular import CAT_NAMES, CONT_NAMES, QUICK_ROWS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle_dir(bundle_of):
    return bundle_of("tabular")


@pytest.fixture(scope="module")
def learner(learner_of):
    return learner_of("tabular")


def test_quick_training_writes_a_sealed_verified_bundle(bundle_dir):
    bundle = open_bundle(bundle_dir)  # checks every sha256
    m = bundle.manifest
    assert m.name == "tabular" and m.task == "tabular-classification"
    assert {"model.onnx", "learner.pkl", "preprocess.json", "show_batch.png", "show_results.png", "confusion_matrix.png"} <= set(m.files)
    for picture in ("show_batch.png", "show_results.png", "confusion_matrix.png"):
        with Image.open(bundle_dir / picture) as im:
            assert im.width > 100 and im.height > 100
    assert m.export_parity["max_abs_diff"] <= 1e-4 and m.export_parity["argmax_agreement"] == 1.0
    assert m.export_parity["rows"] == m.data.n_valid
    assert 0.0 <= m.metrics["accuracy"] <= 1.0 and m.metrics["valid_loss"] > 0
    assert m.data.n_items == m.data.n_train + m.data.n_valid == QUICK_ROWS and len(m.data.sha256) == 64
    assert "untar_data(https://s3.amazonaws.com/fast-ai-sample/adult_sample.tgz)" in m.data.source
    assert m.settings["quick"] is True and m.settings["epochs"] == 1
    x_cat, x_cont = m.onnx_inputs
    assert (x_cat.name, x_cat.dtype, x_cat.shape) == ("x_cat", "int64", ["batch", len(CAT_NAMES) + 1])
    assert (x_cont.name, x_cont.dtype, x_cont.shape) == ("x_cont", "float", ["batch", len(CONT_NAMES)])


def test_the_learner_is_the_lessons_recipe(learner):
    from fastai.tabular.all import Categorify, FillMissing, Normalize

    dls = learner.dls
    assert [type(p) for p in dls.procs if type(p) in (Categorify, FillMissing, Normalize)] == [FillMissing, Categorify, Normalize]
    assert list(dls.cat_names) == CAT_NAMES + ["education-num_na"]  # FillMissing's column, a category
    assert list(dls.cont_names) == CONT_NAMES and list(dls.y_names) == ["salary"]
    assert [m.__name__ for m in learner.metrics.map(lambda x: x.func)] == ["accuracy"]


def test_spec_carries_every_proc_fastai_learned(bundle_dir, learner):
    spec = open_bundle(bundle_dir).spec
    procs = learner.dls.procs
    assert spec.cat_names == list(learner.dls.cat_names) and spec.cont_names == list(learner.dls.cont_names)
    for name in spec.cat_names:
        assert spec.categories[name] == [str(v) for v in procs.categorify.classes[name]]
        assert spec.categories[name][0] == "#na#"
    assert spec.categories["education-num_na"] == ["#na#", "False", "True"]
    assert spec.fill_values == {k: float(v) for k, v in procs.fill_missing.na_dict.items()}
    assert set(spec.fill_values) == {"education-num"}  # the only continuous column with missing values
    for name in spec.cont_names:
        assert spec.means[name] == pytest.approx(float(procs.normalize.means[name]), rel=1e-12)
        assert spec.stds[name] == pytest.approx(float(procs.normalize.stds[name]), rel=1e-12)
    assert spec.y_name == "salary" and spec.vocab == [str(v) for v in learner.dls.vocab] == ["<50k", ">=50k"]


def test_onnx_takes_any_batch_and_matches_the_pickle(bundle_dir, learner):
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    model = learner.model.eval()
    spec = open_bundle(bundle_dir).spec
    rng = np.random.default_rng(0)
    for n in (1, 3, 257):
        x_cat = np.stack([rng.integers(0, len(spec.categories[c]), n) for c in spec.cat_names], axis=1).astype(np.int64)
        x_cont = rng.normal(size=(n, len(spec.cont_names))).astype(np.float32)
        got = session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(x_cat), torch.from_numpy(x_cont)).numpy()
        assert got.shape == (n, 2)
        assert np.abs(got - expected).max() <= 1e-4
