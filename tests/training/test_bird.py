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
    assert m.onnx_inputs[0].shape[1:] == [bundle.spec.height, bundle.spec.width, 3] and m.onnx_inputs[0].dtype == "uint8"
    assert m.format == 2 and m.image_input == "uint8-nhwc"


def test_quick_bundle_records_its_int8_verdict(bird_bundle):
    """model.int8.onnx is in the bundle exactly when it passed its gate on the validation set; either
    way the manifest holds the figures, the gate, the calibration set and the settings."""
    m = open_bundle(bird_bundle).manifest
    q = m.quantization
    assert q.status in ("written", "refused"), q
    assert {"top1_agreement", "fp32_error_rate", "int8_error_rate", "images"} <= set(q.agreement)
    assert q.agreement["images"] == m.data.n_valid
    assert q.gate == {"min_top1_agreement": 0.99, "max_error_increase": 0.01}
    assert q.calibration["split"] == "training set" and 0 < q.calibration["images"] <= min(128, m.data.n_train)
    assert q.settings["format"] == "QDQ" and q.settings["per_channel"] and q.settings["activations"] == "uint8"
    assert q.settings["weights"] == "int8"
    written = q.status == "written"
    assert written == ("model.int8.onnx" in m.files) == (bird_bundle / "model.int8.onnx").exists() == m.has_int8()
    passed = q.agreement["top1_agreement"] >= 0.99 and q.agreement["int8_error_rate"] - q.agreement["fp32_error_rate"] <= 0.01
    assert written == passed, q.reason
    assert q.attempts and not any(a["passed"] for a in q.attempts[:-1]) and q.attempts[-1]["passed"] == written
    assert q.attempts[-1]["top1_agreement"] == round(q.agreement["top1_agreement"], 6)


def shared_pixels(spec, per_label: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_label`` shared bird and forest photos as the graph's uint8 pixels, and their labels."""
    from services.preprocessing import decode_image, image_pixels

    files = [f for label in ("bird", "forest") for f in sorted((SHARED / "bird_or_forest" / label).iterdir())[:per_label]]
    x = np.stack([image_pixels(decode_image(f.read_bytes()), spec) for f in files])
    return x, np.array([spec.vocab.index(f.parent.name) for f in files])


def test_a_gate_that_cannot_be_met_leaves_fp32_only_with_the_figures(bird_bundle, tmp_path):
    """The refusal path: the same quantization held to an impossible agreement (above 1)."""
    from training.quantize import Gate, quantize_model

    spec = open_bundle(bird_bundle).spec
    x, y = shared_pixels(spec, 12)
    out = tmp_path / "model.int8.onnx"
    q = quantize_model(bird_bundle / "model.onnx", out, x[::2], x[1::2], y[1::2], "image-classification",
                       {"split": "test photos"}, Gate(min_top1_agreement=1.01))
    assert q.status == "refused" and q.file is None and not out.exists() and not list(tmp_path.iterdir())
    assert "< 1.01" in q.reason and 0 <= q.agreement["top1_agreement"] <= 1 and q.agreement["images"] == 12
    assert q.gate["min_top1_agreement"] == 1.01 and q.calibration["images"] == 12
    # every candidate judged is on record: all-INT8, then the best-ranked group in FP32, then the best two
    assert len(q.attempts) == 3 and "(3 candidates judged)" in q.reason
    assert [a["fp32_groups"] for a in q.attempts][0] == "none" and len(q.attempts[1]["fp32_groups"]) == 1
    assert set(q.attempts[1]["fp32_groups"]) < set(q.attempts[2]["fp32_groups"]) and len(q.attempts[2]["fp32_groups"]) == 2
    assert not any(a["passed"] for a in q.attempts) and q.attempts[-1]["top1_agreement"] == round(q.agreement["top1_agreement"], 6)
    assert 0 < q.attempts[1]["fp32_nodes"] < q.attempts[2]["fp32_nodes"]


def test_a_fallback_group_runs_in_fp32_and_the_groups_cover_the_network(bird_bundle, tmp_path):
    """The fallback's unit: contiguous runs of the graph with about as many convolutions each; a
    candidate with a group kept in FP32 has no quantized convolution in that group, and every other
    quantizable convolution is still INT8."""
    import onnx

    from training.quantize import GROUPS, _Quantizer, conv_groups

    spec = open_bundle(bird_bundle).spec
    x, _ = shared_pixels(spec, 4)
    q = _Quantizer(bird_bundle / "model.onnx", x, tmp_path)
    groups = conv_groups(q.pre, q.keep)
    nodes = onnx.load(str(q.pre)).graph.node
    names = [n.name for n in nodes]
    convs = [n for n in nodes if n.op_type == "Conv" and n.name not in q.keep]
    assert len(groups) == GROUPS and not set(q.keep) & {n for g in groups for n in g}
    flat = [n for g in groups for n in g]
    assert flat == [n for n in names[names.index(groups[0][0]):] if n not in q.keep]  # contiguous, in graph order
    per_group = [sum(n.name in g for n in convs) for g in groups]
    assert sum(per_group) == len(convs) and max(per_group) - min(per_group) <= 1

    def quantized_convs(path):
        graph = onnx.load(str(path)).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantized}

    q.quantize(tmp_path / "all.onnx")
    q.quantize(tmp_path / "fallback.onnx", groups[0])
    everything = quantized_convs(tmp_path / "all.onnx")
    assert {n.name for n in convs} <= everything
    assert quantized_convs(tmp_path / "fallback.onnx") == everything - set(groups[0])


def test_onnx_model_takes_any_batch_size(bird_bundle):
    import onnxruntime as ort

    spec = json.loads((bird_bundle / "preprocess.json").read_text())
    session = ort.InferenceSession(str(bird_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3, 17):
        x = np.random.default_rng(n).integers(0, 256, (n, spec["height"], spec["width"], 3), dtype=np.uint8)
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
