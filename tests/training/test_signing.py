"""Training signs the bundle it seals when ROOST_SIGNING_KEY names a private key."""

import pytest

from services.signing import SIGNATURE_FILE, keygen, load_public_key, verified_manifest
from tests.conftest import train_quick


@pytest.mark.slow
def test_training_signs_the_manifest_it_seals(tmp_path, monkeypatch):
    private, public = keygen(tmp_path / "keys")
    monkeypatch.setenv("ROOST_SIGNING_KEY", str(private))
    bundle = train_quick("collab", tmp_path / "out")
    assert (bundle / SIGNATURE_FILE).is_file()
    assert verified_manifest(bundle, load_public_key(public)) == (bundle / "manifest.json").read_bytes()
