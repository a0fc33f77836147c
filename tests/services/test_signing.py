"""Signed bundles: Ed25519 over manifest.json, checked before any other file is opened."""

import dataclasses
import json

import pytest

from services.bundle import BundleError
from services.settings import settings_for
from services.signing import SIGNATURE_FILE, check_signature, keygen, load_public_key, main, sign, verified_manifest


@pytest.fixture
def keys(tmp_path):
    return keygen(tmp_path / "keys")


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"name": "bird", "files": {"model.onnx": "ab" * 32}}))
    return folder


def test_the_private_key_is_written_for_its_owner_only(keys):
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_a_signed_manifest_verifies_and_its_exact_bytes_come_back(bundle, keys):
    sign(bundle, keys[0])
    assert verified_manifest(bundle, load_public_key(keys[1])) == (bundle / "manifest.json").read_bytes()


def test_a_changed_manifest_is_refused(bundle, keys):
    sign(bundle, keys[0])
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = "cd" * 32  # a swapped model and its new hash
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature does not match"):
        verified_manifest(bundle, load_public_key(keys[1]))


def test_another_key_and_no_signature_are_refused(bundle, keys, tmp_path):
    other = keygen(tmp_path / "other")
    sign(bundle, other[0])
    with pytest.raises(BundleError, match="signature does not match"):
        verified_manifest(bundle, load_public_key(keys[1]))
    (bundle / SIGNATURE_FILE).unlink()
    with pytest.raises(BundleError, match="not signed"):
        verified_manifest(bundle, load_public_key(keys[1]))


def test_a_key_that_is_not_an_ed25519_public_key_is_refused(keys):
    with pytest.raises(BundleError, match="not a PEM public key"):
        load_public_key(keys[0])  # the private key


def test_the_fastai_runtime_requires_a_trusted_key_and_the_onnx_runtime_does_not(bundle, keys):
    onnx = dataclasses.replace(settings_for("bird"), trusted_key=None, runtime="onnx")
    assert check_signature(bundle, onnx) is None
    with pytest.raises(BundleError, match="needs a signed bundle"):
        check_signature(bundle, dataclasses.replace(onnx, runtime="fastai"))
    sign(bundle, keys[0])
    trusted = dataclasses.replace(onnx, runtime="fastai", trusted_key=str(keys[1]))
    assert check_signature(bundle, trusted) == (bundle / "manifest.json").read_bytes()
    pem = dataclasses.replace(trusted, trusted_key=keys[1].read_text())  # the PEM text itself, e.g. from a Secret
    assert check_signature(bundle, pem)


def test_the_command_line_signs_and_verifies(bundle, keys, capsys):
    assert main(["sign", str(bundle), str(keys[0])]) == 0
    assert main(["verify", str(bundle), str(keys[1])]) == 0
    (bundle / "manifest.json").write_text("{}")
    assert main(["verify", str(bundle), str(keys[1])]) == 1
    assert "signature does not match" in capsys.readouterr().err
