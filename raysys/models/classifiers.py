"""Classifiers by name: small models registered here, anything else from timm.

`create_classifier("resnet18", num_classes=10, in_chans=1)` builds a timm model with random
weights (nothing is downloaded); `weights=` loads a local file, adapting the classifier head
and input channels as timm does for pretrained weights.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: ~0.1M parameters at width 32, for 8-32 px digits."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(in_chans, width),
            block(width, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@register("small_cnn")
def _small_cnn(num_classes: int, in_chans: int, width: int = 32, **_) -> nn.Module:
    return SmallCNN(num_classes, in_chans, width)


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, in [0, 1] pixel units, that `model`'s inputs are normalised with:
    a timm model's own data config (its pretrained config: ImageNet's statistics for most, CLIP's
    for CLIP towers, ...); (0.5,), (0.5,), i.e. inputs in [-1, 1], for the models registered here."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        return (0.5,), (0.5,)
    return tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])


def normalize(images_uint8: torch.Tensor, model: Optional[nn.Module] = None) -> torch.Tensor:
    """uint8 [0, 255] images (N, C, H, W) -> float, normalised as `model` expects (`input_stats`;
    [-1, 1] without a model). Statistics for three channels are averaged for grey images."""
    mean, std = input_stats(model) if model is not None else ((0.5,), (0.5,))
    channels = images_uint8.shape[1]
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    x = images_uint8.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features a classifier's head reads (N, d): SmallCNN's pooled features, a timm model's
    pre-logits."""
    model = getattr(model, "module", model)
    if isinstance(model, SmallCNN):
        return model.features(x)
    return model.forward_head(model.forward_features(x), pre_logits=True)


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def _load_local_weights(model: nn.Module, path: str) -> None:
    """Load a state dict; tensors whose shape differs (a head for another class count) are
    left at their random init, with a warning. Anything else that does not fit is an error."""
    import warnings

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith("head.") for k in mismatched):
        raise ValueError(f"{path}: weights do not fit this model (shape mismatch in {mismatched[:5]}; "
                         "only the classifier head may differ)")
    if mismatched:
        warnings.warn(f"{path}: {mismatched} have another shape (class count); left at random init")
    fitting = {k: v for k, v in state.items() if k not in mismatched}
    missing, unexpected = model.load_state_dict(fitting, strict=False)
    if unexpected or len(missing) == len(own):
        raise ValueError(f"{path}: weights do not fit this model (unexpected keys {unexpected[:5]})")


def _timm_model(name: str, **kwargs) -> nn.Module:
    import timm

    try:  # models with a fixed input grid (ViT, ...) take img_size; CNNs refuse it
        return timm.create_model(name, **kwargs)
    except TypeError:
        kwargs.pop("img_size", None)
        return timm.create_model(name, **kwargs)


def create_classifier(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    *,
    width: int = 32,
    weights: Optional[str] = None,
    image_size: Optional[int] = None,
) -> nn.Module:
    """Build classifier `name` with random init, or from the local `weights` file.

    image_size is passed to timm models that need it (ViT and other fixed-grid models).
    """
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(f"classifier.weights: no such file {weights}")
    if name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, width=width)
        if weights is not None:
            _load_local_weights(model, weights)
        return model

    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(
            f"classifier.name '{name}' is neither registered ({registered_names()}) nor a timm "
            f"model; similar timm names: {close}"
        )
    size = {"img_size": image_size} if image_size is not None else {}
    if weights is None:
        return _timm_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **size)
    # timm adapts the head (num_classes) and the stem (in_chans) of pretrained weights.
    return _timm_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay={"file": os.path.abspath(weights)},
        num_classes=num_classes,
        in_chans=in_chans,
        **size,
    )


# --- save / load: a directory with classifier.json (how to build it) and model.safetensors ---

def save_classifier(model: nn.Module, directory: str, meta: dict) -> None:
    """Write `meta` (name, num_classes, in_chans, width, image_size, ...) and the weights."""
    import json

    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "classifier.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_classifier(directory: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Inverse of save_classifier: (model in eval mode, meta)."""
    import json

    from safetensors.torch import load_file

    meta_path = os.path.join(directory, "classifier.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"no classifier.json in {directory}: not a saved classifier")
    with open(meta_path) as f:
        meta = json.load(f)
    model = create_classifier(
        meta["name"], meta["num_classes"], meta["in_chans"], width=meta.get("width", 32), image_size=meta.get("image_size")
    )
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    return model.to(device).eval(), meta


def check_classifier(c) -> list[str]:
    """Problems of the `classifier` section (a ClassifierConfig), found before any worker starts."""
    import os

    problems = []
    if c.name not in _REGISTRY:
        import timm

        if not timm.is_model(c.name):
            close = timm.list_models(f"*{c.name.split('_')[0]}*")[:8]
            problems.append(f"classifier.name '{c.name}' is neither registered ({registered_names()}) nor a timm "
                            f"model; similar timm names: {close}")
    if c.weights is not None:
        if "://" in c.weights:
            problems.append(f"classifier.weights must be a local file (workers read it from disk), got {c.weights}")
        elif not os.path.isfile(c.weights):
            problems.append(f"classifier.weights: no such file {c.weights}")
    return problems
