import json

import pytest

from services.bundle import (
    MANIFEST_FILE,
    BundleError,
    DataSummary,
    ImageSpec,
    TabularSpec,
    find_latest,
    open_bundle,
    seal,
    IMAGE_INPUT,
    write_spec,
)


def make_bundle(folder, version="20260101-000000"):
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    (folder / "learner.pkl").write_bytes(b"pickle bytes")
    (folder / "show_batch.png").write_bytes(b"png")
    write_spec(folder, ImageSpec(height=8, width=8, vocab=["a", "b"]))
    return seal(
        folder,
        dict(
            name="bird", version=version, created="2026-01-01T00:00:00+00:00", task="image-classification",
            arch="resnet18", weights="none", versions={"fastai": "2.8"},
            data=DataSummary(source="test", n_items=2, sha256="0" * 64), metrics={"error_rate": 0.0},
            training_seconds=1.0, onnx_inputs=[], onnx_outputs=[], onnx_opset=18, export_parity={"max_abs_diff": 0.0},
            image_input=IMAGE_INPUT,
        ),
    )


def test_seal_hashes_every_file_and_open_reads_it_back(tmp_path):
    manifest = make_bundle(tmp_path / "bird" / "v1")
    assert set(manifest.files) == {"model.onnx", "learner.pkl", "preprocess.json", "show_batch.png"}
    bundle = open_bundle(tmp_path / "bird" / "v1")
    assert bundle.name == "bird" and bundle.spec.vocab == ["a", "b"] and bundle.spec.kind == "image"


@pytest.mark.parametrize("victim", ["model.onnx", "learner.pkl", "preprocess.json", "show_batch.png"])
def test_a_tampered_file_is_refused(tmp_path, victim):
    folder = tmp_path / "bird" / "v1"
    make_bundle(folder)
    (folder / victim).write_bytes(b"something else")
    with pytest.raises(BundleError, match="does not match its manifest"):
        open_bundle(folder)


def test_a_missing_file_is_refused(tmp_path):
    folder = tmp_path / "bird" / "v1"
    make_bundle(folder)
    (folder / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        open_bundle(folder)


def test_a_serving_copy_may_leave_out_only_the_pickle(tmp_path):
    """Images bake bundles without learner.pkl: the ONNX server never reads it; the fastai runtime's
    own check of it still says it is missing."""
    folder = tmp_path / "bird" / "v1"
    make_bundle(folder)
    (folder / "learner.pkl").unlink()
    bundle = open_bundle(folder)
    with pytest.raises(BundleError, match="missing"):
        bundle.verify_file("learner.pkl")
    (folder / "preprocess.json").unlink()
    with pytest.raises(BundleError, match="missing"):
        open_bundle(folder)


def test_the_pickle_can_be_checked_on_its_own(tmp_path):
    folder = tmp_path / "bird" / "v1"
    make_bundle(folder)
    bundle = open_bundle(folder)
    (folder / "learner.pkl").write_bytes(b"evil")
    with pytest.raises(BundleError):
        bundle.verify_file("learner.pkl")


def test_not_a_bundle_and_wrong_manifest(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        open_bundle(tmp_path)
    folder = tmp_path / "bird" / "v1"
    make_bundle(folder)
    (folder / MANIFEST_FILE).write_text(json.dumps({"name": "bird"}))
    with pytest.raises(BundleError, match="not a valid manifest"):
        open_bundle(folder)


def test_seal_refuses_an_incomplete_bundle(tmp_path):
    tmp_path.joinpath("model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="learner.pkl is missing"):
        seal(tmp_path, {})


def test_find_latest_picks_the_newest_sealed_version(tmp_path):
    make_bundle(tmp_path / "bird" / "20260101-000000")
    make_bundle(tmp_path / "bird" / "20260301-000000", version="20260301-000000")
    (tmp_path / "bird" / "20270101-000000").mkdir()  # not sealed: a training still running
    assert find_latest(tmp_path, "bird").name == "20260301-000000"
    with pytest.raises(BundleError, match="make train-collab"):
        find_latest(tmp_path, "collab")


def test_specs_are_strict():
    with pytest.raises(ValueError):
        ImageSpec(height=8, width=8, vocab=["a"], surprise=1)
    spec = TabularSpec(cat_names=["a"], cont_names=["b"], categories={"a": ["#na#"]}, fill_values={}, means={"b": 0.0},
                       stds={"b": 1.0}, y_name="y", vocab=["0", "1"])
    assert spec.kind == "tabular"
