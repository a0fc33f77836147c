"""`python -m training <model> [options]`: train a lesson-1 model and write its bundle."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from training.common import TrainOptions

RECIPES = ("bird", "segment", "tabular", "collab")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:  # `python -m training import export.pkl --name N --samples S`: training/importer.py
        from training.importer import main as import_main

        return import_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     epilog="python -m training import PATH/export.pkl --name NAME --samples DIR_OR_CSV: bring your own learner")
    parser.add_argument("model", choices=RECIPES)
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="bundle root (default: artifacts)")
    parser.add_argument("--data", type=Path, help="train from this folder instead of the lesson's download")
    parser.add_argument("--epochs", type=int, help="default: the lesson's")
    parser.add_argument("--size", type=int, help="image size (image models)")
    parser.add_argument("--bs", type=int, help="batch size")
    parser.add_argument("--quick", action="store_true", help="small subset, small images, 1 epoch (tests)")
    parser.add_argument("--arch", help="backbone (image models); default: the lesson's")
    parser.add_argument("--no-pretrained", action="store_true", help="train from scratch")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-int8", action="store_true", help="image models: skip the INT8 copy (model.int8.onnx)")
    parser.add_argument("--int8-min-agreement", type=float,
                        help="image models' INT8 gate: top-1 (bird) or pixel (segment) agreement with FP32 it must reach "
                             "(default 0.99 / 0.98; above 1 always refuses)")
    parser.add_argument("--cache", type=Path, default=Path(".cache"), help="downloads, converted weights, FASTAI_HOME")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    opts = TrainOptions(
        out=args.out, data=args.data, epochs=args.epochs, size=args.size, bs=args.bs, quick=args.quick,
        arch=args.arch, pretrained=not args.no_pretrained, seed=args.seed, cache=args.cache,
        int8=not args.no_int8, int8_min_agreement=args.int8_min_agreement,
    )
    recipe = importlib.import_module(f"training.{args.model}")
    bundle = recipe.train(opts)
    print(bundle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
