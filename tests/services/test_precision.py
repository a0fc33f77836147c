"""ROOST_PRECISION: which model file a server runs (FP32 model.onnx or the gated model.int8.onnx),
refused at start where it cannot be had, and said everywhere (startup log, GET /model, OIP model
metadata, roost_model_info)."""

import json
import re
import shutil

import httpx
import numpy as np
import pytest

from services.bundle import INT8_FILE, LEARNER_FILE, MANIFEST_FILE, MODEL_FILE, BundleError, Quantization, open_bundle, seal
from services.runtime import model_file
from tests.conftest import BIRD_EXAMPLES, SHARED


def reseal(folder, quantization: Quantization) -> None:
    """Rewrite a (copied, unsigned) bundle's manifest with another INT8 verdict."""
    fields = json.loads((folder / MANIFEST_FILE).read_text())
    fields.pop("files")
    fields["quantization"] = quantization.model_dump()
    (folder / "manifest.sig").unlink(missing_ok=True)
    seal(folder, fields)


@pytest.fixture(scope="module")
def int8_bundle(bundle_of, tmp_path_factory):
    """A copy of the quick bird bundle that holds model.int8.onnx: the export's own if it passed its
    gate, else the same quantization kept under a gate that always passes (the quick model is weak,
    so whether its INT8 passes the real gate is not this module's question)."""
    from services.preprocessing import decode_image, image_pixels
    from training.quantize import Gate, quantize_model

    source = bundle_of("bird")
    folder = tmp_path_factory.mktemp("int8") / source.name
    shutil.copytree(source, folder)
    if not open_bundle(folder).manifest.has_int8():
        spec = open_bundle(folder).spec
        files = sorted((SHARED / "bird_or_forest" / "bird").iterdir())[:16] + sorted((SHARED / "bird_or_forest" / "forest").iterdir())[:16]
        x = np.stack([image_pixels(decode_image(f.read_bytes()), spec) for f in files])
        y = np.array([spec.vocab.index(f.parent.name) for f in files])
        q = quantize_model(folder / MODEL_FILE, folder / INT8_FILE, x, x, y, "image-classification", {"split": "test photos"},
                           Gate(min_top1_agreement=0.0, max_error_increase=1.0))
        assert q.status == "written", q
        reseal(folder, q)
    return folder


@pytest.fixture(scope="module")
def fp32_only(int8_bundle, tmp_path_factory):
    """The same bundle as the export leaves it when INT8 fails its gate: no file, the reason."""
    folder = tmp_path_factory.mktemp("fp32") / int8_bundle.name
    shutil.copytree(int8_bundle, folder)
    (folder / INT8_FILE).unlink()
    reseal(folder, Quantization(status="refused", reason="top-1 agreement with FP32 0.9750 < 0.99", agreement={"top1_agreement": 0.975}))
    return folder


# --- which file ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_auto_is_int8_on_cpu_and_fp32_on_gpu_and_int8_needs_the_file(int8_bundle, fp32_only):
    with_int8, without = open_bundle(int8_bundle), open_bundle(fp32_only)
    assert model_file(with_int8, "auto") == INT8_FILE
    assert model_file(with_int8, "auto", cuda=True) == MODEL_FILE
    assert model_file(with_int8, "fp32") == MODEL_FILE
    assert model_file(with_int8, "int8") == INT8_FILE == model_file(with_int8, "int8", cuda=True)
    assert model_file(without, "auto") == MODEL_FILE == model_file(without, "fp32")
    with pytest.raises(BundleError, match=r"ROOST_PRECISION=int8 but .* has no model.int8.onnx \(its INT8 model was refused at export: top-1 agreement"):
        model_file(without, "int8")
    assert model_file(with_int8, "auto", runtime="fastai") == LEARNER_FILE
    with pytest.raises(BundleError, match="needs ROOST_RUNTIME=onnx"):
        model_file(with_int8, "int8", runtime="fastai")


def test_an_old_manifest_has_no_int8_and_tables_say_none():
    from training.quantize import not_offered

    q = not_offered("tabular-classification")
    assert q.status == "none" and q.file is None and "not quantized" in q.reason
    old = {"format": 1, "name": "tabular", "version": "v", "created": "c", "task": "tabular-classification", "arch": "a",
           "weights": "w", "files": {}, "versions": {}, "data": {"source": "s", "n_items": 1, "sha256": "x"}, "metrics": {},
           "training_seconds": 1, "onnx_inputs": [], "onnx_outputs": [], "onnx_opset": 18, "export_parity": {}}
    from services.bundle import Manifest

    m = Manifest.model_validate(old)  # optional fields with defaults: old bundles load
    assert m.quantization is None and m.image_input is None and not m.has_int8()


def test_a_format_1_image_bundle_is_refused_with_what_to_do(tmp_path):
    from services.bundle import ImageSpec, write_spec

    (tmp_path / MODEL_FILE).write_bytes(b"x")
    (tmp_path / LEARNER_FILE).write_bytes(b"x")
    write_spec(tmp_path, ImageSpec(height=8, width=8, vocab=["a", "b"]))
    seal(tmp_path, {"format": 1, "name": "bird", "version": "v", "created": "c", "task": "image-classification", "arch": "a",
                    "weights": "w", "versions": {}, "data": {"source": "s", "n_items": 1, "sha256": "x"}, "metrics": {},
                    "training_seconds": 1, "onnx_inputs": [], "onnx_outputs": [], "onnx_opset": 18, "export_parity": {}})
    with pytest.raises(BundleError, match=r"takes float32 NCHW images; .* retrain it with `make train-bird`"):
        open_bundle(tmp_path)


@pytest.mark.slow
def test_in_process_int8_agrees_with_fp32_on_the_examples(int8_bundle):
    import asyncio

    from tests.in_process import in_process_model

    int8 = in_process_model("bird", int8_bundle, precision="auto")
    fp32 = in_process_model("bird", int8_bundle, precision="fp32")
    assert (int8.model_file, int8.precision, fp32.model_file, fp32.precision) == (INT8_FILE, "int8", MODEL_FILE, "fp32")
    images = [p.read_bytes() for p in sorted(BIRD_EXAMPLES.iterdir())]
    a, b = asyncio.run(int8(images)), asyncio.run(fp32(images))
    assert [r.label for r in a] == [r.label for r in b]
    assert max(abs(x.probability - y.probability) for x, y in zip(a, b)) < 0.2


# --- what a server says -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cpu_server_serves_int8_by_default_and_says_so_everywhere(int8_bundle, tmp_path):
    from tests.server import start_server

    server = start_server("services.bird:Bird", int8_bundle, tmp_path)
    try:
        info = httpx.get(f"{server.url}/model", timeout=10).json()
        assert (info["model_file"], info["precision"], info["requested_precision"], info["device"]) == (INT8_FILE, "int8", "auto", "cpu")
        assert info["int8"]["status"] == "written" and info["image_input"] == "uint8-nhwc"
        meta = httpx.get(f"{server.url}/v2/models/bird", timeout=10).json()
        assert meta["parameters"] == {"model_file": INT8_FILE, "precision": "int8", "device": "cpu"}
        assert re.search(r'roost_model_info\{[^}]*file="model\.int8\.onnx"[^}]*precision="int8"', server.metrics())
        r = httpx.post(f"{server.url}/predict", files={"image": ("bird.jpg", (BIRD_EXAMPLES / "bird.jpg").read_bytes())}, timeout=60)
        assert r.status_code == 200 and r.json()["label"] in ("bird", "forest")
        assert re.search(r"serving Bundle\(bird:.*\): model\.int8\.onnx \(int8, ROOST_PRECISION=auto\)", server.log_text())
    finally:
        server.stop()


@pytest.mark.slow
def test_fp32_is_served_when_asked_and_int8_without_the_file_stops_the_start(int8_bundle, fp32_only, tmp_path):
    from tests.server import start_server

    server = start_server("services.bird:Bird", int8_bundle, tmp_path / "a", {"ROOST_PRECISION": "fp32"})
    try:
        assert httpx.get(f"{server.url}/model", timeout=10).json()["model_file"] == MODEL_FILE
        assert re.search(r'roost_model_info\{[^}]*file="model\.onnx"[^}]*precision="fp32"', server.metrics())
    finally:
        server.stop()
    with pytest.raises(RuntimeError) as failed:
        start_server("services.bird:Bird", fp32_only, tmp_path / "b", {"ROOST_PRECISION": "int8"}, ready_timeout=60)
    lines = [line for line in str(failed.value).splitlines() if line.startswith("roost: cannot serve")]
    assert len(lines) == 1 and "ROOST_PRECISION=int8 but" in lines[0] and "refused at export" in lines[0], str(failed.value)[-2000:]
