import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ROOST_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))  # as training/data.py
BIRD_EXAMPLES = SHARED / "bird_or_forest_examples"

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("MPLBACKEND", "Agg")


def train_quick(model: str, out: Path, *extra: str) -> Path:
    """Run the real training CLI in quick mode; returns the bundle folder it printed."""
    cache = ROOT / ".cache"  # converted weights and fastai data are reusable across runs
    result = subprocess.run(
        [sys.executable, "-m", "training", model, "--quick", "--out", str(out), "--cache", str(cache), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"training {model} failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def quick_bundle(model: str, tmp_path_factory) -> Path:
    """ROOST_TEST_BUNDLE_<MODEL> if set; else `model`'s quick bundle, trained through
    `python -m training <model> --quick` once per test session and cached on disk under pytest's
    base temp (<basetemp>/<model>-quick), so every module that asks gets the same one."""
    override = os.environ.get(f"ROOST_TEST_BUNDLE_{model.upper()}")
    if override:
        return Path(override)
    from services.bundle import MANIFEST_FILE

    root = tmp_path_factory.getbasetemp() / f"{model}-quick"
    found = sorted(p for p in (root / model).glob("*") if (p / MANIFEST_FILE).is_file()) if root.is_dir() else []
    if found:
        return found[-1]
    return train_quick(model, root)


@pytest.fixture(scope="session")
def bundle_of(tmp_path_factory):
    """bundle_of(model) -> the session's bundle folder of `model` (see quick_bundle)."""
    bundles: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in bundles:
            bundles[model] = quick_bundle(model, tmp_path_factory)
        return bundles[model]

    return get


@pytest.fixture(scope="session")
def server_of(bundle_of, tmp_path_factory):
    """server_of(model) -> a running `bentoml serve` of `model`'s service on bundle_of(model), with the
    default settings except ROOST_PRECISION=fp32 (the parity tests compare with fastai's FP32
    learner; tests/services/test_precision.py serves INT8): started on first use, shared by every
    module after that (a test that stops it gets a fresh one next time), all stopped at the end of
    the session. A test that needs other settings starts its own with tests.server.start_server."""
    from services.registry import MODELS
    from tests.server import start_server

    servers: dict = {}
    started: list = []

    def get(model: str):
        server = servers.get(model)
        if server is None or server.proc.poll() is not None:
            server = start_server(MODELS[model].service, bundle_of(model), tmp_path_factory.mktemp(f"{model}-serve"),
                                  {"ROOST_PRECISION": "fp32"})
            servers[model] = server
            started.append(server)
        return server

    yield get
    codes = [server.stop() for server in started]
    assert None not in codes, codes


@pytest.fixture(scope="session")
def learner_of(bundle_of):
    """learner_of(model) -> fastai's learner from bundle_of(model)/learner.pkl (on the CPU), loaded once."""
    learners: dict = {}

    def get(model: str):
        if model not in learners:
            from fastai.learner import load_learner

            learners[model] = load_learner(bundle_of(model) / "learner.pkl", cpu=True)
        return learners[model]

    return get


@pytest.fixture(scope="session")
def bird_bundle(bundle_of) -> Path:
    """One quick bird model per test session, trained on a real subset of the shared photos."""
    return bundle_of("bird")


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory) -> tuple[Path, Path]:
    """(private, public) Ed25519 PEM files made for this test session."""
    from services.signing import keygen

    return keygen(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def signed_copy(signing_keys, tmp_path):
    """signed_copy(bundle) -> (a signed copy of the bundle, the env that trusts its key)."""
    import shutil

    from services.signing import sign

    def make(bundle: Path) -> tuple[Path, dict]:
        copy = tmp_path / f"signed-{bundle.parent.name}"
        shutil.copytree(bundle, copy)
        sign(copy, signing_keys[0])
        return copy, {"ROOST_TRUSTED_KEY": str(signing_keys[1])}

    return make
