"""The segmentation recipe, run for real in quick mode on CamVid-tiny (through untar_data's offline copy)."""

import numpy as np
import pytest
from PIL import Image

from services.bundle import open_bundle
from tests.services.segment_helpers import CAMVID

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle_dir(bundle_of):
    return bundle_of("segment")


@pytest.fixture(scope="module")
def learner(learner_of):
    return learner_of("segment")


def test_quick_training_writes_a_sealed_verified_bundle(bundle_dir):
    bundle = open_bundle(bundle_dir)  # checks every sha256
    m, spec = bundle.manifest, bundle.spec
    assert m.name == "segment" and m.task == "semantic-segmentation"
    assert {"model.onnx", "learner.pkl", "preprocess.json", "show_batch.png", "show_results.png"} <= set(m.files)
    for picture in ("show_batch.png", "show_results.png"):
        with Image.open(bundle_dir / picture) as im:
            assert im.width > 100 and im.height > 100
    with Image.open(bundle_dir / "show_results.png") as im:
        assert im.width >= 1000  # three 4-inch columns at 90 dpi: readable
    # the ONNX parity figure, measured on the validation set against the re-loaded pickle
    assert m.export_parity["max_abs_diff"] <= 1e-4 and m.export_parity["argmax_agreement"] == 1.0
    assert m.export_parity["rows"] == m.data.n_valid
    assert 0.0 <= m.metrics["pixel_accuracy"] <= 1.0 and m.metrics["valid_loss"] > 0
    assert m.data.n_items == m.data.n_train + m.data.n_valid == 10 and len(m.data.sha256) == 64
    assert "untar_data(https://s3.amazonaws.com/fast-ai-sample/camvid_tiny.tgz)" in m.data.source
    assert m.weights and m.arch.startswith("DynamicUnet(")  # which backbone, and where its weights came from
    assert m.settings["lesson_arch"] == "resnet34" and m.settings["quick"] is True
    assert spec.kind == "segmentation" and spec.codes == list(np.loadtxt(CAMVID / "codes.txt", dtype=str))
    assert (spec.height, spec.width) == (96, 128)  # the lesson has no Resize: CamVid-tiny's own size
    assert (spec.mean is None) == m.weights.startswith("none")  # ImageNet stats only with pretrained weights
    batch, height, width, channels = m.onnx_inputs[0].shape  # uint8 NHWC pixels (bundle format 2)
    assert batch == "batch" and channels == 3 and "height" in height and "width" in width
    assert m.onnx_inputs[0].dtype == "uint8" and m.image_input == "uint8-nhwc" and m.format == 2
    assert m.onnx_outputs[0].shape[1] == len(spec.codes)
    q = m.quantization  # INT8: written if it passed its gate, else the reason and the figures
    assert q.status in ("written", "refused") and "pixel_agreement" in q.agreement and q.gate == {"min_pixel_agreement": 0.98}
    assert (q.status == "written") == ("model.int8.onnx" in m.files) == (bundle_dir / "model.int8.onnx").exists()


def test_onnx_takes_any_batch_and_any_multiple_of_32_and_matches_the_pickle(bundle_dir, learner):
    import onnxruntime as ort
    import torch

    from services.preprocessing import softmax

    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    model = learner.model.eval()
    rng = np.random.default_rng(0)
    from services.preprocessing import to_float_nchw

    spec = open_bundle(bundle_dir).spec
    for n, h, w in ((1, 96, 128), (3, 64, 96), (2, 160, 224)):
        pixels = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)  # the graph takes uint8 NHWC
        got = session.run(None, {"image": pixels})[0]
        assert got.shape == (n, 32, h, w)
        with torch.no_grad():
            expected = model(torch.from_numpy(to_float_nchw(pixels, spec.mean, spec.std))).as_subclass(torch.Tensor).numpy()
        assert np.abs(softmax(got, axis=1) - softmax(expected, axis=1)).max() <= 1e-4
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.999


def test_learner_pickle_needs_nothing_from_the_training_package(bundle_dir, monkeypatch):
    """unet_learner keeps its arch on the learner; ours is a name, and the lesson's label_func lambda is
    pickled by value, so learner.pkl loads (and predicts) where `training` cannot be imported."""
    import sys

    import torch
    from fastai.learner import load_learner

    for name in [m for m in sys.modules if m == "training" or m.startswith("training.")] + ["training"]:
        monkeypatch.setitem(sys.modules, name, None)  # any `import training...` now raises ImportError
    learn = load_learner(bundle_dir / "learner.pkl", cpu=True)
    assert learn.arch == open_bundle(bundle_dir).manifest.settings["arch"]
    with torch.no_grad():
        assert learn.model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 32, 64, 64)


def test_the_lesson_arch_without_weights_builds_the_lessons_unet(tmp_path):
    """`--no-pretrained`: resnet34 from scratch, exactly unet_learner(dls, resnet34), no Normalize."""
    from fastai.vision.all import Normalize, get_image_files

    from training.backbone import choose_backbone
    from training.segment import build_learner, mask_codes

    backbone = choose_backbone("resnet34", False, tmp_path)
    learn = build_learner(CAMVID, get_image_files(CAMVID / "images").sorted()[:10], backbone)
    assert learn.arch == "resnet34" and not learn.dls.after_batch.fs.filter(lambda t: isinstance(t, Normalize))
    assert mask_codes(learn.dls)[:2] == ["Animal", "Archway"]
    x, y = learn.dls.one_batch()
    assert x.shape[-2:] == y.shape[-2:] == (96, 128)


def test_show_results_is_rows_of_image_target_prediction_with_a_class_legend(tmp_path):
    import matplotlib.pyplot as plt
    from fastai.vision.all import get_image_files

    from training.backbone import choose_backbone
    from training.segment import build_learner, draw_results, mask_codes

    learn = build_learner(CAMVID, get_image_files(CAMVID / "images").sorted()[:20], choose_backbone("resnet34", False, tmp_path))
    fig = draw_results(learn, max_n=3)
    try:
        assert len(fig.axes) == 3 * 3
        assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "target", "prediction"]
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert len(labels) >= 3 and len(set(labels)) == len(labels) and set(labels) <= set(mask_codes(learn.dls))
        assert fig.get_figwidth() * 90 >= 1000 and fig.get_figheight() >= 3 * 3.0  # inches: three rows of 4 x 3 images
    finally:
        plt.close(fig)
