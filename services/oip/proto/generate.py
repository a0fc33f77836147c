"""Regenerate grpc_predict_v2_pb2.py from grpc_predict_v2.proto (needs grpcio-tools, a dev extra).

    python -m services.oip.proto.generate           # rewrite the committed module
    python -m services.oip.proto.generate --check   # exit 1 if the committed module is stale

Only the message module is generated: the servicer is registered by hand in services/oip/grpc.py
(grpc.method_handlers_generic_handler), so no *_pb2_grpc.py module ties the server to the
grpcio version that generated it. The module's descriptors live in a private pool (one edit to
protoc's output, made here), so it can be imported beside tritonclient's copy of the protocol.
The generated module needs protobuf >= the
"Protobuf Python Version" written in its header.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "grpc_predict_v2.proto"
MODULE = "grpc_predict_v2_pb2.py"


def generate(out_dir: Path) -> Path:
    from grpc_tools import protoc  # noqa: PLC0415 - dev-only dependency

    rc = protoc.main(["grpc_tools.protoc", f"-I{HERE}", f"--python_out={out_dir}", str(HERE / PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    module = out_dir / MODULE
    text = module.read_text()
    # A private descriptor pool: the `inference.*` names then never clash with another copy of the
    # protocol loaded in the same process (tritonclient's own, in tests and in user code).
    default_pool = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
    if text.count(default_pool) != 1:
        raise SystemExit(f"unexpected protoc output: cannot find {default_pool!r}")
    text = text.replace(
        default_pool,
        "POOL = _descriptor_pool.DescriptorPool()  # private: see services/oip/proto/generate.py\n"
        "DESCRIPTOR = POOL.AddSerializedFile(",
    )
    module.write_text(text)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.oip.proto.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = HERE / MODULE
        if args.check:
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                print(f"{committed} is stale: run python -m services.oip.proto.generate", file=sys.stderr)
                return 1
            print(f"{committed} is up to date")
            return 0
        shutil.copyfile(fresh, committed)
        print(f"wrote {committed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
