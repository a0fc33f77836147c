"""The bird recipe, run for real in quick mode on a subset of the shared photos."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from services.bundle import open_bundle
from tests.conftest import SHARED, train_quick

pytestmark = pytest.mark.slow


def test_quick_training_writes_a_sealed_verified_bundle(bird_bundle):
    bundle = open_bundle(bird_bundle)  # checks every sha256
    m = bundle.manifest
    assert m.name == "bird" and m.task == "image-classification"
    assert {"model.onnx", "learner.pkl", "preprocess.json", "show_batch.png", "confusion_matrix.png", "top_losses.png"} <= set(m.files)
    for picture in ("show_batch.png", "confusion_matrix.png", "top_losses.png"):
        with Image.open(bird_bundle / picture) as im:
            assert im.width > 100 and im.height > 100
    assert m.export_parity["max_abs_diff"] <= 1e-4 and m.export_parity["argmax_agreement"] == 1.0
    assert 0.0 <= m.metrics["error_rate"] <= 1.0
    assert m.data.n_items == m.data.n_train + m.data.n_valid and len(m.data.sha256) == 64
    assert m.weights and m.arch  # the weights' origin is always written down
    assert m.versions["fastai"].startswith("2.8") and m.versions["torch"] == "2.14.1"
    assert bundle.spec.vocab == ["bird", "forest"]
    assert m.onnx_inputs[0].shape[0] == "batch"  # dynamic batch axis


def test_onnx_model_takes_any_batch_size(bird_bundle):
    import onnxruntime as ort

    spec = json.loads((bird_bundle / "preprocess.json").read_text())
    session = ort.InferenceSession(str(bird_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3, 17):
        x = np.random.default_rng(n).standard_normal((n, 3, spec["height"], spec["width"])).astype(np.float32)
        assert session.run(None, {"image": x})[0].shape == (n, 2)


def test_any_folder_of_labelled_subfolders_trains_three_classes_too(tmp_path):
    """The lesson's homework: your own categories. Three labels made from the shared photos."""
    data = tmp_path / "data"
    for label, source in (("bird", "bird"), ("forest", "forest")):
        (data / label).mkdir(parents=True)
        for img in sorted((SHARED / "bird_or_forest" / source).iterdir())[:12]:
            shutil.copy(img, data / label / img.name)
    (data / "grey_forest").mkdir()
    for img in sorted((SHARED / "bird_or_forest" / "forest").iterdir())[-12:]:
        Image.open(img).convert("L").convert("RGB").save(data / "grey_forest" / (img.stem + ".png"))
    bundle = open_bundle(train_quick("bird", tmp_path / "out", "--data", str(data), "--no-pretrained", "--size", "32"))
    assert bundle.spec.vocab == ["bird", "forest", "grey_forest"]
    assert bundle.manifest.onnx_outputs[0].shape[-1] == 3
    assert bundle.manifest.weights.startswith("none")
    assert bundle.manifest.data.source.startswith("folder")
