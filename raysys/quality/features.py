"""Feature extractors by name, for the set measures: encoded images in, (N, d) float32 features out.

- `classifier` (the default): the run's baseline classifier's penultimate features. It needs
  nothing downloaded, and it is the space the classifier learns in.
- `inception`: torch-fidelity's InceptionV3 (FID's own 2048-d pool features, via torchmetrics'
  `NoTrainInceptionV3`), from `weights` or torch's download cache.
- any timm model name: its pooled pre-logits features, with its pretrained weights (from `weights`
  or timm's cache) or, with `pretrained: false`, random weights.

An extractor that cannot be built raises `ExtractorUnavailable` with one line that says what to do.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from raysys.core.loading import ConfigError
from raysys.data.images import decode_batch
from raysys.models.classifiers import load_classifier, normalize, penultimate

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""The file torch-fidelity downloads into torch's hub cache ($TORCH_HOME/hub/checkpoints)."""


class ExtractorUnavailable(ConfigError):
    """The extractor cannot be built here (a missing package or weights file): the message says what to do
    (the CLI prints it as one line)."""


def extractor_problems(name: str) -> list[str]:
    """Problems of `quality.extractor` found without loading anything."""
    if name in ("classifier", "inception"):
        return []
    import timm

    if not timm.is_model(name):
        return [f"quality.extractor '{name}' is neither classifier, inception nor a timm model name "
                f"(similar timm names: {timm.list_models(f'*{name.split(chr(95))[0]}*')[:6]})"]
    return []


class FeatureExtractor:
    """Loads one extractor once; `__call__` turns encoded images into features."""

    def __init__(self, name: str, classifier_dir: Optional[str] = None, weights: Optional[str] = None,
                 pretrained: bool = True, device: str = "cpu"):
        self.name, self.device = name, torch.device(device)
        if name == "classifier":
            if classifier_dir is None:
                raise ValueError("the classifier extractor needs the baseline classifier's folder")
            self.model, meta = load_classifier(classifier_dir, self.device)
            self.size, self.channels = meta["image_size"], meta["in_chans"]
        elif name == "inception":
            self.model, self.size, self.channels = _inception(weights).to(self.device), None, 3
        else:
            self.model = _timm(name, weights, pretrained).to(self.device).eval()
            self.size, self.channels = self.model.pretrained_cfg["input_size"][-1], 3

    @torch.no_grad()
    def __call__(self, images: list[bytes]) -> np.ndarray:
        if not images:
            return np.zeros((0, 0), np.float32)
        size = self.size or 299  # inception resizes to 299 itself; decoding at that size keeps detail
        pixels = torch.from_numpy(decode_batch(images, size, self.channels)).to(self.device)
        if self.name == "inception":
            features = self.model(pixels)  # uint8 in, as torch-fidelity expects
        else:
            features = penultimate(self.model, normalize(pixels, self.model))
        return features.float().cpu().numpy()


def _inception(weights: Optional[str]):
    what = ("quality.extractor=inception needs torch-fidelity (pip install torch-fidelity) and its InceptionV3 "
            f"weights: set quality.weights=<file> or put {INCEPTION_FILE} in $TORCH_HOME/hub/checkpoints; "
            "or use quality.extractor=classifier, which needs nothing downloaded")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=weights)
    except Exception as exc:  # a missing package, no network, a wrong file: one line either way
        raise ExtractorUnavailable(f"{what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _timm(name: str, weights: Optional[str], pretrained: bool):
    import timm

    overlay = {"pretrained_cfg_overlay": {"file": weights}} if weights else {}
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **overlay)
    except Exception as exc:
        raise ExtractorUnavailable(
            f"quality.extractor={name}: its pretrained weights could not be loaded ({type(exc).__name__}); set "
            "quality.weights=<local file>, or quality.pretrained=false for random weights, or use "
            "quality.extractor=classifier") from None
