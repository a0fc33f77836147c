"""The benchmark's reference peer: a plain FastAPI + onnxruntime server on one bundle, no batching.

    python -m tests.bench_baseline --bundle artifacts/bird/<version> --port 8123 [--threads 2] [--workers 1]

One ONNX Runtime session per worker (intra-op threads: --threads, default every core), one request
= one `session.run`. It reuses Roost's numpy/PIL preprocessing (services/preprocessing.py) so that
both servers do the same work per row and only the serving layer differs. What a typical
hand-written server does, and no more: no request validation beyond what the encoders check, no
metrics, no queue bound, no deadline.

POST /predict  image models: multipart file field `image`; tabular: JSON {"row": {...}};
               collab: JSON {"pairs": [{"user": .., "movie": ..}, ...]}.   GET /readyz: 200.
"""

from __future__ import annotations

import argparse
import base64
import io
import os

import numpy as np
import onnxruntime as ort
from fastapi import Body, FastAPI, File, HTTPException, UploadFile
from PIL import Image

from services.bundle import MODEL_FILE, open_bundle
from services.preprocessing import (
    CollabIndex, InvalidInput, TabularEncoder, decode_image, image_pixels, mask_to_size, segmentation_pixels, softmax,
)


def create_app() -> FastAPI:
    bundle = open_bundle(os.environ["BASELINE_BUNDLE"])
    spec = bundle.spec
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("BASELINE_THREADS") or len(os.sched_getaffinity(0)))
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(bundle.file(MODEL_FILE)), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    app = FastAPI()

    @app.get("/readyz")
    def readyz():
        return {"ready": True}

    def classify(logits, vocab):
        probs = softmax(logits.astype(np.float64), axis=1)[0]
        best = int(probs.argmax())
        return {"label": vocab[best], "probability": float(probs[best]), "probabilities": dict(zip(vocab, probs.tolist()))}

    if spec.kind == "image":
        @app.post("/predict")
        def predict_image(image: UploadFile = File(...)):  # a sync route: FastAPI runs it in its thread pool
            try:
                x = image_pixels(decode_image(image.file.read()), spec)[None]  # uint8 NHWC: the graph normalizes
            except InvalidInput as exc:
                raise HTTPException(exc.status, exc.message) from None
            return classify(session.run(None, {names[0]: x})[0], spec.vocab)

    elif spec.kind == "segmentation":
        @app.post("/predict")
        def predict_mask(image: UploadFile = File(...)):
            try:
                img = decode_image(image.file.read())
            except InvalidInput as exc:
                raise HTTPException(exc.status, exc.message) from None
            mask = session.run(None, {names[0]: segmentation_pixels(img, spec)[None]})[0][0].argmax(0).astype(np.uint8)
            mask = mask_to_size(mask, img.width, img.height)
            png = io.BytesIO()
            Image.fromarray(mask, mode="L").save(png, format="PNG")
            counts = np.bincount(mask.ravel(), minlength=len(spec.codes)) / mask.size
            return {"width": img.width, "height": img.height, "mask_png_base64": base64.b64encode(png.getvalue()).decode(),
                    "class_fractions": dict(zip(spec.codes, counts.tolist()))}

    elif spec.kind == "tabular":
        encoder, n_cat = TabularEncoder(spec), len(spec.cat_names)

        @app.post("/predict")
        async def predict_row(row: dict = Body(..., embed=True)):  # microseconds of work: no thread hop
            try:
                x = encoder.rows([row])
            except InvalidInput as exc:
                raise HTTPException(422, exc.message) from None
            feeds = {names[0]: x[:, :n_cat].astype(np.int64), names[1]: np.ascontiguousarray(x[:, n_cat:])}
            out = classify(session.run(None, feeds)[0], spec.vocab)
            return {"salary": out.pop("label"), **out}

    elif spec.kind == "collab":
        index = CollabIndex(spec)

        @app.post("/predict")
        async def predict_pairs(pairs: list[dict] = Body(..., embed=True)):
            x = index.rows([(p.get("user"), p.get("movie")) for p in pairs])
            ratings = session.run(None, {names[0]: x})[0].reshape(-1)
            return [{"user": p.get("user"), "movie": p.get("movie"), "rating": float(r)} for p, r in zip(pairs, ratings)]

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m tests.bench_baseline")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads per worker (0: every core)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ["BASELINE_BUNDLE"] = str(args.bundle)
    os.environ["BASELINE_THREADS"] = str(args.threads or "")
    uvicorn.run("tests.bench_baseline:create_app", factory=True, host="127.0.0.1", port=args.port,
                workers=args.workers, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
