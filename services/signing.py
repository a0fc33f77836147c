"""Bundles you can trust: an Ed25519 signature over manifest.json.

The manifest's sha256 list proves a bundle is intact, not who made it: whoever can write the folder
can replace ``learner.pkl`` and its hash. Training (or a promotion step) signs the exact bytes of
``manifest.json`` with a private key and writes the signature beside it (``manifest.sig``, base64).
A server given the public key (``ROOST_TRUSTED_KEY``: a PEM file, or the PEM text, e.g. from a
Kubernetes Secret) refuses an unsigned or wrongly signed bundle before it opens any other file, and
since the manifest lists every file's sha256, the signature covers them all. ``ROOST_RUNTIME=fastai``
unpickles ``learner.pkl`` (which runs code), so it requires a trusted key and a signed bundle.

    python -m services.signing keygen DIR          # DIR/roost-signing.key (private, 0600) + .pub
    python -m services.signing sign BUNDLE KEY     # writes BUNDLE/manifest.sig
    python -m services.signing verify BUNDLE PUB
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from pathlib import Path

from services.bundle import MANIFEST_FILE, BundleError

SIGNATURE_FILE = "manifest.sig"
TRUSTED_KEY_ENV = "ROOST_TRUSTED_KEY"
SIGNING_KEY_ENV = "ROOST_SIGNING_KEY"  # training signs every bundle it seals with this private key


def _pem(value: str | os.PathLike) -> bytes:
    text = str(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read key {text}: {exc.strerror or exc}") from None


def load_public_key(value: str | os.PathLike):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(_pem(value))
    except ValueError as exc:
        raise BundleError(f"the trusted key is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("the trusted key is not an Ed25519 public key")
    return key


def load_private_key(value: str | os.PathLike):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(_pem(value), password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"the signing key is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("the signing key is not an Ed25519 private key")
    return key


def keygen(folder: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private, public = folder / "roost-signing.key", folder / "roost-signing.pub"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def sign(bundle: Path, key) -> Path:
    """Sign ``bundle``'s manifest.json with a private key (object, PEM text or path)."""
    if not hasattr(key, "sign"):
        key = load_private_key(key)
    signature = key.sign((Path(bundle) / MANIFEST_FILE).read_bytes())
    path = Path(bundle) / SIGNATURE_FILE
    path.write_text(base64.b64encode(signature).decode() + "\n")
    return path


def verified_manifest(bundle: Path, public_key) -> bytes:
    """manifest.json's bytes, once its signature checks out under ``public_key``; else BundleError."""
    from cryptography.exceptions import InvalidSignature

    bundle = Path(bundle)
    try:
        manifest = (bundle / MANIFEST_FILE).read_bytes()
    except OSError:
        raise BundleError(f"no {MANIFEST_FILE} in {bundle}: not a bundle") from None
    try:
        signature = base64.b64decode((bundle / SIGNATURE_FILE).read_text().strip(), validate=True)
    except OSError:
        raise BundleError(f"{bundle} is not signed (no {SIGNATURE_FILE}) and {TRUSTED_KEY_ENV} requires a signed bundle") from None
    except (binascii.Error, ValueError):
        raise BundleError(f"{bundle / SIGNATURE_FILE} is not base64") from None
    try:
        public_key.verify(signature, manifest)
    except InvalidSignature:
        raise BundleError(f"{bundle}: the signature does not match manifest.json under the trusted key: refusing it") from None
    return manifest


def check_signature(bundle: Path, settings) -> bytes | None:
    """What the server's settings ask of ``bundle``: the verified manifest bytes, or None when no
    key is configured (only allowed for the ONNX runtime)."""
    if settings.trusted_key:
        return verified_manifest(bundle, load_public_key(settings.trusted_key))
    if settings.runtime == "fastai":
        raise BundleError(
            f"ROOST_RUNTIME=fastai unpickles learner.pkl, which runs code: it needs a signed bundle and "
            f"{TRUSTED_KEY_ENV} (the public key) to check it"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.signing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("keygen").add_argument("folder", type=Path)
    signer = sub.add_parser("sign")
    signer.add_argument("bundle", type=Path)
    signer.add_argument("key", help="private key PEM file")
    verifier = sub.add_parser("verify")
    verifier.add_argument("bundle", type=Path)
    verifier.add_argument("public_key", help="public key PEM file")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            private, public = keygen(args.folder)
            print(f"wrote {private} (keep it secret) and {public}")
        elif args.command == "sign":
            print(f"wrote {sign(args.bundle, args.key)}")
        else:
            verified_manifest(args.bundle, load_public_key(args.public_key))
            print(f"{args.bundle}: signature OK")
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
