"""Roost serving side: BentoML services over ONNX Runtime. Never imports torch or fastai
(except services.runtime's fastai runtime, lazily, when ROOST_RUNTIME=fastai)."""
