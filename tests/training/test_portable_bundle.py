"""A bundle travels between machines: nothing in it may name a path of the machine that made it."""

import os
import pickletools
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from services.bundle import open_bundle
from tests.conftest import ROOT, SHARED

pytestmark = pytest.mark.slow

MODELS = ("bird", "segment", "tabular", "collab")


def machine_paths(bundle: Path) -> set[str]:
    """The checkout, the venv, the Python install, $HOME, the shared datasets and the bundle root."""
    paths = {ROOT, Path(sys.prefix), Path(sys.base_prefix), Path.home(), SHARED, bundle.parent.parent}
    paths |= {p.resolve() for p in paths}
    return {str(p) for p in paths if len(p.parts) > 1}


def pickle_strings(data: bytes) -> list[str]:
    """Every string a pickle holds, in order, memo references included."""
    strings, memo, top = [], {}, None
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("BINGET", "LONG_BINGET", "GET"):
            top = memo.get(arg)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = top
            continue
        elif op.name == "MEMOIZE":
            memo[len(memo)] = top
            continue
        else:
            top = arg if isinstance(arg, str) and "GLOBAL" not in op.name else None
        if isinstance(top, str):
            strings.append(top)
    return strings


def learner_text(path: Path) -> str:
    """learner.pkl (torch.save's zip) as text: a pickled Path is a tuple of its parts, so the strings
    are joined with "/" to bring ('/', 'work', 'main') back to "/work/main"."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    return re.sub("/+", "/", "/".join(pickle_strings(data)))


@pytest.mark.parametrize("model", MODELS)
def test_a_fresh_bundle_names_no_path_of_the_machine_that_made_it(model, bundle_of):
    bundle = bundle_of(model)
    paths = machine_paths(bundle)
    found = []
    for file in sorted(bundle.iterdir()):
        data = file.read_bytes()
        texts = [data.decode("latin-1")] + ([learner_text(file)] if file.name == "learner.pkl" else [])
        found += [f"{file.name}: {p}" for p in paths if any(p in text for text in texts)]
    assert not found, found


@pytest.mark.parametrize("model", MODELS)
def test_the_manifest_names_the_data_by_a_root_and_the_code_by_its_commit(model, bundle_of):
    m = open_bundle(bundle_of(model)).manifest
    assert re.match(r"(shared datasets|fastai|downloaded|folder [a-z ]+): ", m.data.source), m.data.source
    if not os.environ.get(f"ROOST_TEST_BUNDLE_{model.upper()}"):  # a bundle made here, from this checkout
        assert re.fullmatch("[0-9a-f]{40}", m.git_commit) and isinstance(m.git_dirty, bool)
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", m.git_commit, "HEAD"], cwd=ROOT)
        assert ancestor.returncode == 0  # HEAD itself, or an older commit when others committed since
