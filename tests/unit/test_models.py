import pytest
import torch

from raysys.models.classifiers import create_classifier, load_classifier, registered_names, save_classifier

# Every registered model plus timm backbones the docs name, through the same contract.
CONTRACT = [(name, 28) for name in registered_names()] + [("resnet18", 32), ("vit_tiny_patch16_224", 32)]


@pytest.mark.parametrize("name,size", CONTRACT)
def test_contract_shapes_grads_and_round_trip(name, size, tmp_path):
    model = create_classifier(name, num_classes=7, in_chans=1, image_size=size)
    x = torch.randn(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    meta = {"name": name, "num_classes": 7, "in_chans": 1, "width": 32, "image_size": size}
    save_classifier(model, str(tmp_path / "m"), meta)
    loaded, meta2 = load_classifier(str(tmp_path / "m"))
    model.eval()
    assert meta2 == meta
    assert torch.allclose(model(x), loaded(x), atol=1e-5)


def test_timm_local_weights_adapt_head_and_channels(tmp_path):
    from safetensors.torch import save_file

    source = create_classifier("resnet18", num_classes=1000, in_chans=3)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_classifier("resnet18", num_classes=10, in_chans=3, weights=str(path))
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.get_classifier().out_features == 10
    gray = create_classifier("resnet18", num_classes=10, in_chans=1, weights=str(path))
    assert gray.conv1.weight.shape[1] == 1  # RGB stem folded into one channel by timm
    assert torch.allclose(gray.conv1.weight[:, 0], source.conv1.weight.sum(1), atol=1e-5)


def test_small_cnn_weights_keep_body_and_reinit_other_head(tmp_path):
    source = create_classifier("small_cnn", num_classes=10, in_chans=1)
    torch.save(source.state_dict(), tmp_path / "cnn.pth")
    with pytest.warns(UserWarning, match="head"):
        model = create_classifier("small_cnn", num_classes=5, in_chans=1, weights=str(tmp_path / "cnn.pth"))
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert model.head.out_features == 5
    with pytest.raises(ValueError, match="do not fit"):
        create_classifier("small_cnn", num_classes=10, in_chans=3, weights=str(tmp_path / "cnn.pth"))


def test_unknown_name_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither registered"):
        create_classifier("resnet_imaginary", 10)
    with pytest.raises(FileNotFoundError, match="classifier.weights"):
        create_classifier("small_cnn", 10, weights=str(tmp_path / "none.pth"))


def test_inputs_are_normalised_as_each_model_expects(tmp_path):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from raysys.models.classifiers import input_stats, normalize

    pixels = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    small = create_classifier("small_cnn", 3, 1)
    assert input_stats(small) == ((0.5,), (0.5,))
    assert torch.allclose(normalize(pixels, small).flatten(), torch.tensor([-1.0, 64 / 127.5 - 1, 128 / 127.5 - 1, 1.0]), atol=1e-6)

    rgb = pixels.expand(1, 3, 2, 2).contiguous()
    resnet = create_classifier("resnet18", 3, 3)
    assert input_stats(resnet) == (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    x = normalize(rgb, resnet)
    for c in range(3):  # (v / 255 - mean_c) / std_c, channel by channel
        expected = (pixels.flatten().float() / 255 - IMAGENET_DEFAULT_MEAN[c]) / IMAGENET_DEFAULT_STD[c]
        assert torch.allclose(x[0, c].flatten(), expected, atol=1e-6)
    grey = normalize(pixels, create_classifier("resnet18", 3, 1))  # one channel: the stats averaged
    mean, std = sum(IMAGENET_DEFAULT_MEAN) / 3, sum(IMAGENET_DEFAULT_STD) / 3
    assert torch.allclose(grey.flatten(), (pixels.flatten().float() / 255 - mean) / std, atol=1e-6)

    clip = create_classifier("vit_tiny_patch16_224", 3, 3, image_size=32)  # a timm model's own config ...
    clip.pretrained_cfg = {**clip.pretrained_cfg, "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD}  # ... as CLIP's has
    assert input_stats(clip) == (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))
    assert not torch.allclose(normalize(rgb, clip), normalize(rgb, resnet))

    # a saved and reloaded timm classifier (what scoring loads) normalises as the trained one did
    save_classifier(resnet, str(tmp_path / "m"), {"name": "resnet18", "num_classes": 3, "in_chans": 3, "width": 32,
                                                   "image_size": 32})
    loaded, _ = load_classifier(str(tmp_path / "m"))
    assert input_stats(loaded) == input_stats(resnet)
