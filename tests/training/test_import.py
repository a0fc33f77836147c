"""Bring your own learner: `python -m training import` (training/importer.py) and its service
(services/imported.py). Small learners are trained here (tiny images, one epoch), exported with
learn.export(), imported, served by a real `bentoml serve`, and compared with learn.predict on every
protocol; the lesson models' own pickles are imported too; and the refusals."""

from __future__ import annotations

import base64
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, SHARED
from tests.server import start_server

SERVICE = "services.imported:Imported"
CAMVID = SHARED / "fastai_samples" / "camvid_tiny"
ADULT = SHARED / "fastai_samples" / "adult_sample" / "adult.csv"
RATINGS = SHARED / "fastai_samples" / "movie_lens_sample" / "ratings.csv"
SIZE = 112  # under a quarter of the photos' sides (<= 400 px): the server decodes them whole, as fastai does


@pytest.fixture(scope="module", autouse=True)
def fastai_home(tmp_path_factory):
    os.environ.setdefault("FASTAI_HOME", str(tmp_path_factory.mktemp("fastai-home")))
    os.environ.setdefault("MPLBACKEND", "Agg")


# --- tiny data and learners -------------------------------------------------------------------------


def three_classes(root: Path, per_class: int = 8) -> Path:
    """bird / forest (bird_or_forest) / street (CamVid-tiny) photos: a 3-class folder dataset."""
    sources = {
        "bird": sorted((SHARED / "bird_or_forest" / "bird").iterdir()),
        "forest": sorted((SHARED / "bird_or_forest" / "forest").iterdir()),
        "street": sorted((CAMVID / "images").iterdir()),
    }
    for label, files in sources.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for f in files[:per_class]:
            shutil.copy(f, root / label / f.name)
    return root


def sample_folder(root: Path, data: Path) -> Path:
    """Images the model never trained on: the bird examples and two more of each class."""
    root.mkdir(parents=True, exist_ok=True)
    for f in (SHARED / "bird_or_forest_examples").iterdir():
        shutil.copy(f, root / f.name)
    for label, folder in (("bird", SHARED / "bird_or_forest" / "bird"), ("street", CAMVID / "images")):
        for f in sorted(folder.iterdir())[-2:]:
            shutil.copy(f, root / f"{label}-{f.name}")
    return root


def multi_labels(path):  # no return annotation: fastai would cast to it, and cannot to list[str]
    """Multi-label targets from the folder: birds and forests are outdoors too, streets are streets."""
    label = Path(path).parent.name
    return {"bird": ["bird", "outdoor"], "forest": ["forest", "outdoor"], "street": ["street"]}[label]


def train_image_learner(data: Path, arch, out: Path, multi: bool = False) -> Path:
    from fastai.vision.all import (
        CategoryBlock, DataBlock, ImageBlock, MultiCategoryBlock, RandomSplitter, Resize, get_image_files, parent_label,
        set_seed, vision_learner,
    )

    set_seed(0)
    dls = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock if multi else CategoryBlock),
        get_items=get_image_files,
        get_y=multi_labels if multi else parent_label,
        splitter=RandomSplitter(valid_pct=0.25, seed=0),
        item_tfms=[Resize(SIZE, method="squish")],
    ).dataloaders(data, bs=8, num_workers=0)
    learn = vision_learner(dls, arch, pretrained=False)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1)
    learn.export(out.resolve())
    return out


def served_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def import_(learner: Path, name: str, samples: Path, out: Path) -> Path:
    from training.importer import import_learner

    return import_learner(learner, name, samples, out)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("import-images")
    data = three_classes(tmp / "data")
    return data, sample_folder(tmp / "samples", data)


@pytest.fixture(scope="module")
def resnet_export(images, tmp_path_factory) -> Path:
    from fastai.vision.all import resnet34

    return train_image_learner(images[0], resnet34, tmp_path_factory.mktemp("resnet") / "export.pkl")


def load(path: Path):
    from fastai.learner import load_learner

    return load_learner(path, cpu=True)


# --- image classifiers: torchvision (random weights) and timm ------------------------------------------


def check_image_classifier_served(bundle: Path, learner: Path, samples: Path, tmp: Path, name: str) -> None:
    """Typed HTTP, OIP REST and OIP gRPC answers of the served bundle equal learn.predict."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    learn = load(learner)
    files = sorted(p for p in samples.iterdir())
    server = start_server(SERVICE, bundle, tmp)
    try:
        for f in files:
            label, _, probs = learn.predict(f)
            r = httpx.post(f"{server.url}/predict", files={"image": (f.name, served_bytes(f))}, timeout=60)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["label"] == str(label)
            got = [answer["probabilities"][str(c)] for c in learn.dls.vocab]
            assert np.abs(np.array(got) - probs.numpy()).max() < 1e-4
        batch = httpx.post(
            f"{server.url}/predict_batch", json={"images": [base64.b64encode(served_bytes(f)).decode() for f in files]}, timeout=60
        ).json()
        assert [b["label"] for b in batch] == [str(learn.predict(f)[0]) for f in files]
        images = np.array([served_bytes(f) for f in files], dtype=object)
        for module, client in ((th, th.InferenceServerClient(f"127.0.0.1:{server.port}")),
                               (tg, tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}"))):
            inp = module.InferInput("image", [len(files)], "BYTES")
            inp.set_data_from_numpy(images)
            result = client.infer(name, [inp])
            assert [x.decode() for x in result.as_numpy("label").reshape(-1)] == [b["label"] for b in batch]
        metrics = server.metrics()
        from tests.server import metric_sum

        assert metric_sum(metrics, rf'roost_requests_total\{{model="{name}",outcome="ok",protocol="oip_grpc"\}}') == 1
        assert metric_sum(metrics, rf'roost_requests_total\{{model="{name}",outcome="ok",protocol="http"\}}') == len(files) + 1
        assert metric_sum(metrics, rf'roost_model_info\{{[^}}]*model="{name}"[^}}]*\}}') == 1
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_torchvision_resnet_three_classes(resnet_export, images, tmp_path):
    bundle = import_(resnet_export, "street-bird-forest", images[1], tmp_path / "artifacts")
    from services.bundle import open_bundle

    opened = open_bundle(bundle)
    assert opened.manifest.task == "image-classification" and opened.spec.vocab == ["bird", "forest", "street"]
    assert (opened.spec.height, opened.spec.width, opened.spec.resize_method) == (SIZE, SIZE, "squish")
    assert opened.spec.mean is None  # pretrained=False: fastai added no Normalize, and the spec says so
    assert opened.manifest.export_parity["samples"] == len(list(images[1].iterdir()))
    assert opened.manifest.export_parity["max_abs_diff"] <= 1e-4
    assert (bundle / "learner.pkl").read_bytes() == resnet_export.read_bytes()  # the user's own file
    assert (bundle / "samples.png").is_file()
    check_image_classifier_served(bundle, resnet_export, images[1], tmp_path / "serve", "street-bird-forest")


def test_the_server_never_unpickles_an_imported_learner(resnet_export, images, tmp_path):
    """Without learner.pkl the default (ONNX) runtime serves the bundle; the fastai runtime, which would
    unpickle it, refuses an unsigned bundle."""
    import dataclasses

    from services.bundle import BundleError, open_bundle
    from services.imported import model_class
    from services.registry import MODELS, imported_facts, register
    from services.settings import settings_for

    bundle = import_(resnet_export, "no-pickle", images[1], tmp_path / "artifacts")
    (bundle / "learner.pkl").unlink()
    spec = open_bundle(bundle).spec
    register(imported_facts("no-pickle", "image-classification"))
    try:
        settings = dataclasses.replace(settings_for("no-pickle"), bundle=bundle, runtime="onnx", trusted_key=None)
        model = model_class("no-pickle", "image-classification", spec)(settings=settings).load()
        assert model.runtime.name == "onnx"
        rows = model.preprocess([served_bytes(sorted(images[1].iterdir())[0])])
        assert model.postprocess(model.run_batch(rows), [None])[0].label in spec.vocab
        with pytest.raises(BundleError, match="ROOST_RUNTIME=fastai unpickles"):
            model_class("no-pickle", "image-classification", spec)(settings=dataclasses.replace(settings, runtime="fastai")).load()
    finally:
        MODELS.pop("no-pickle", None)


@pytest.mark.slow
def test_timm_model(images, tmp_path):
    learner = train_image_learner(images[0], "resnet10t", tmp_path / "export.pkl")
    bundle = import_(learner, "timm-three", images[1], tmp_path / "artifacts")
    check_image_classifier_served(bundle, learner, images[1], tmp_path / "serve", "timm-three")


@pytest.mark.slow
def test_multi_label_classifier(images, tmp_path):
    import tritonclient.http as th
    from fastai.vision.all import resnet18

    learner = train_image_learner(images[0], resnet18, tmp_path / "export.pkl", multi=True)
    bundle = import_(learner, "outdoors", images[1], tmp_path / "artifacts")
    from services.bundle import open_bundle

    spec = open_bundle(bundle).spec
    assert spec.multi_label and spec.threshold == 0.5 and spec.vocab == ["bird", "forest", "outdoor", "street"]
    learn = load(learner)
    server = start_server(SERVICE, bundle, tmp_path / "serve")
    try:
        files = sorted(images[1].iterdir())
        for f in files:
            labels, _, probs = learn.predict(f)
            answer = httpx.post(f"{server.url}/predict", files={"image": (f.name, served_bytes(f))}, timeout=60).json()
            assert sorted(answer["labels"]) == sorted(str(x) for x in labels)
            assert np.abs(np.array([answer["probabilities"][c] for c in spec.vocab]) - probs.numpy()).max() < 1e-4
        client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
        inp = th.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([served_bytes(files[0])], dtype=object))
        result = client.infer("outdoors", [inp])
        assert result.as_numpy("predicted").shape == (1, 4) and result.as_numpy("probabilities").shape == (1, 4)
        assert httpx.get(f"{server.url}/", follow_redirects=False).status_code == 307  # no page fits: the API docs
    finally:
        assert server.stop() == 0


# --- a tabular regressor -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tabular_regressor(tmp_path):
    import pandas as pd
    import tritonclient.grpc as tg
    from fastai.tabular.all import Categorify, FillMissing, Normalize, RegressionBlock, TabularDataLoaders, set_seed, tabular_learner

    df = pd.read_csv(ADULT, skipinitialspace=True, nrows=400)
    cats, conts = ["workclass", "education", "occupation"], ["fnlwgt", "education-num"]
    set_seed(0)
    dls = TabularDataLoaders.from_df(
        df.iloc[:360], path=tmp_path, procs=[Categorify, FillMissing, Normalize], cat_names=list(cats), cont_names=list(conts),  # fastai appends the _na columns
        y_names="age", y_block=RegressionBlock(), bs=64,
    )
    learn = tabular_learner(dls, y_range=(15, 95), layers=[20, 10])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1)
    learner = tmp_path / "export.pkl"
    learn.export(learner)
    samples = tmp_path / "samples.csv"
    df.iloc[360:372].to_csv(samples, index=False)

    bundle = import_(learner, "age", samples, tmp_path / "artifacts")
    from services.bundle import open_bundle
    from training.importer import table_row

    opened = open_bundle(bundle)
    assert opened.manifest.task == "tabular-regression" and opened.spec.regression and opened.spec.vocab == []
    learn = load(learner)
    rows = pd.read_csv(samples, skipinitialspace=True)
    server = start_server(SERVICE, bundle, tmp_path / "serve")
    try:
        payload = [
            {c: (None if pd.isna(row[c]) else (str(row[c]) if c in cats else float(row[c]))) for c in cats + conts}
            for _, row in rows.iterrows()
        ]
        answers = httpx.post(f"{server.url}/predict_batch", json={"rows": payload}, timeout=60).json()
        expected = [float(learn.predict(table_row(learn, row))[2].reshape(-1)[0]) for _, row in rows.iterrows()]
        assert np.abs(np.array([a["value"] for a in answers]) - expected).max() < 1e-3
        one = httpx.post(f"{server.url}/predict", json={"row": payload[0]}, timeout=60).json()
        assert abs(one["value"] - expected[0]) < 1e-3
        bad = httpx.post(f"{server.url}/predict", json={"row": {**payload[0], "salary": "x"}}, timeout=60)
        assert bad.status_code == 422  # a column the learner does not know
        client = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        inputs = []
        for c in cats + conts:
            if c in cats:
                inp = tg.InferInput(c, [len(payload)], "BYTES")
                inp.set_data_from_numpy(np.array([(p[c] or "").encode() for p in payload], dtype=object))
            else:
                inp = tg.InferInput(c, [len(payload)], "FP32")
                inp.set_data_from_numpy(np.array([np.nan if p[c] is None else p[c] for p in payload], dtype=np.float32))
            inputs.append(inp)
        got = client.infer("age", inputs).as_numpy("age")
        assert np.abs(got.reshape(-1) - np.array(expected)).max() < 1e-3
    finally:
        assert server.stop() == 0


# --- the lesson models' own pickles ---------------------------------------------------------------------------


def lesson_samples(model: str, tmp: Path) -> Path:
    if model == "bird":
        return SHARED / "bird_or_forest_examples"
    if model == "segment":
        folder = tmp / "camvid"
        folder.mkdir()
        for f in sorted((CAMVID / "images").iterdir())[-3:]:
            shutil.copy(f, folder / f.name)
        return folder
    import pandas as pd

    csv = tmp / "samples.csv"
    source = ADULT if model == "tabular" else RATINGS
    pd.read_csv(source, skipinitialspace=True).iloc[-10:].to_csv(csv, index=False)
    return csv


def lesson_check(model: str, samples: Path, server, learn) -> None:
    """One typed request to the imported model's server against learn.predict on the same input."""
    import pandas as pd

    if model in ("bird", "segment"):
        f = sorted(samples.iterdir())[0]
        r = httpx.post(f"{server.url}/predict", files={"image": (f.name, f.read_bytes())}, timeout=60)
        assert r.status_code == 200, r.text
        expected = learn.predict(f)
        if model == "bird":
            assert r.json()["label"] == str(expected[0])
            assert abs(r.json()["probability"] - float(expected[2].max())) < 1e-4
        else:
            from services.segment import decode_mask_png

            assert (decode_mask_png(r.json()["mask_png_base64"]) == expected[1].numpy()).all()
        return
    frame = pd.read_csv(samples, skipinitialspace=True)
    row = frame.iloc[0]
    if model == "collab":  # learn.predict fails on collab rows in fastai 2.8: its steps, test_dl -> get_preds
        expected = (None, None, learn.get_preds(dl=learn.dls.test_dl(frame.iloc[[0, 0]]))[0].reshape(-1)[0])
    else:
        expected = learn.predict(row)
    if model == "collab":
        r = httpx.post(f"{server.url}/predict", json={"pairs": [{"user": int(row["userId"]), "movie": int(row["movieId"])}]}, timeout=60)
        assert r.status_code == 200, r.text
        assert abs(r.json()[0]["rating"] - float(expected[2])) < 1e-4
        return
    columns = ["workclass", "education", "marital-status", "occupation", "relationship", "race", "age", "fnlwgt", "education-num"]
    record = {k: (None if pd.isna(row[k]) else (row[k].item() if hasattr(row[k], "item") else row[k])) for k in columns}
    r = httpx.post(f"{server.url}/predict", json={"row": record}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == str(learn.dls.vocab[int(expected[1])])
    assert abs(r.json()["probability"] - float(expected[2].max())) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bird", "segment", "tabular", "collab"])
def test_lesson_pickles(model, bundle_of, tmp_path):
    """Each lesson model's learner.pkl, imported under another name: the same preprocessing facts as
    the lesson's own bundle, read from the pickle alone, and served answers equal to learn.predict."""
    from services.bundle import open_bundle

    lesson = bundle_of(model)
    samples = lesson_samples(model, tmp_path)
    bundle = import_(lesson / "learner.pkl", f"my-{model}", samples, tmp_path / "artifacts")
    from services.bundle import load_json

    imported = open_bundle(bundle)
    assert imported.manifest.task == load_json(lesson / "manifest.json")["task"]
    # the lesson bundle's preprocess.json, read as the imported spec's kind (older bundles lack newer defaults);
    # collab: an imported learner comes without its ratings file, so nothing is 'seen'
    original = type(imported.spec).model_validate(load_json(lesson / "preprocess.json"))
    assert imported.spec.model_dump(exclude={"seen"}) == original.model_dump(exclude={"seen"})
    server = start_server(SERVICE, bundle, tmp_path / "serve")
    try:
        lesson_check(model, samples, server, load(lesson / "learner.pkl"))
    finally:
        assert server.stop() == 0


# --- the proof, and the refusals -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_mismatch_fails_naming_the_first_sample(resnet_export, images, tmp_path, monkeypatch):
    """Wrong normalization stats (as a wrong preprocess.json would be) fail the proof; nothing is sealed."""
    import training.common
    from training.importer import ImportRefused

    monkeypatch.setattr(training.common, "normalize_stats", lambda dls: ([0.5, 0.5, 0.5], [0.1, 0.1, 0.1]))
    with pytest.raises(ImportRefused, match=r"proof failed on sample bird-\S+: .*(says|differ)"):
        import_(resnet_export, "wrong-stats", images[1], tmp_path / "artifacts")
    assert not any(p.name[0].isdigit() for p in (tmp_path / "artifacts" / "wrong-stats").iterdir())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", "import", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_no_samples_is_refused_before_unpickling(tmp_path):
    learner = tmp_path / "export.pkl"
    learner.write_bytes(b"anything")  # never read: the refusal comes first
    result = cli(str(learner), "--name", "pets")
    assert result.returncode == 2
    assert "no samples" in result.stderr and "proven on real inputs" in result.stderr
    assert "unpickling" not in result.stderr and "Traceback" not in result.stderr


def test_corrupt_file_is_refused_with_a_message(tmp_path):
    learner = tmp_path / "export.pkl"
    learner.write_bytes(os.urandom(4096))
    result = cli(str(learner), "--name", "pets", "--samples", str(SHARED / "bird_or_forest_examples"))
    assert result.returncode == 2, result.stderr
    assert "cannot read" in result.stderr and "learn.export()" in result.stderr and "Traceback" not in result.stderr
    assert "unpickling" in result.stderr  # it says that it unpickles, and what


def test_pickle_from_old_fastai_gets_what_to_do(tmp_path):
    import fastcore.transform
    import torch

    from training.importer import ImportRefused, load_user_learner

    class Pipeline:  # what a fastai < 2.8 learner refers to: fastcore.transform.Pipeline
        pass

    Pipeline.__module__, Pipeline.__qualname__ = "fastcore.transform", "Pipeline"
    fastcore.transform.Pipeline = Pipeline
    try:
        torch.save({"tfms": Pipeline()}, tmp_path / "old.pkl")
    finally:
        del fastcore.transform.Pipeline
    with pytest.raises(ImportRefused, match=r"fastai < 2.8.*re-train with fastai >= 2.8"):
        load_user_learner(tmp_path / "old.pkl")


def a_number(path) -> float:
    return float(len(Path(path).name) % 7)


def test_unsupported_learner_names_what_it_found(tmp_path):
    """An image regressor (ImageBlock -> RegressionBlock) is none of the tasks Roost imports."""
    from fastai.vision.all import DataBlock, ImageBlock, RegressionBlock, Resize, get_image_files, resnet18, vision_learner

    from training.importer import ImportRefused, detect_task, load_user_learner

    dls = DataBlock(
        blocks=(ImageBlock, RegressionBlock), get_items=lambda p: get_image_files(p)[:8], get_y=a_number, item_tfms=Resize(32),
    ).dataloaders(SHARED / "bird_or_forest", bs=4, num_workers=0)
    vision_learner(dls, resnet18, pretrained=False, n_out=1).export(tmp_path / "export.pkl")
    with pytest.raises(ImportRefused, match=r"model Sequential, data DataLoaders, loss \w+ with targets made by .*Roost imports"):
        detect_task(load_user_learner(tmp_path / "export.pkl"))


def test_names_are_checked():
    from training.importer import ImportRefused, check_name

    with pytest.raises(ImportRefused, match="lesson model"):
        check_name("bird")
    with pytest.raises(ImportRefused, match="lower-case"):
        check_name("My_Pets")
    check_name("pets-2")


def test_imported_names_get_their_task_facts():
    from services.registry import IMPORTED_SERVICE, MODELS, imported_facts

    facts = imported_facts("pets", "image-multilabel-classification")
    assert facts.name == "pets" and facts.service == IMPORTED_SERVICE
    assert facts.max_batch_size == MODELS["bird"].max_batch_size and facts.memory == MODELS["bird"].memory
    with pytest.raises(ValueError, match="lesson model"):
        imported_facts("bird", "image-classification")
    with pytest.raises(ValueError, match="not one Roost serves"):
        imported_facts("pets", "object-detection")
