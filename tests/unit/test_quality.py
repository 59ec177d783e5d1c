"""Synthetic-set measures on features: FID against its closed form, precision / recall / density /
coverage against hand-worked examples, memorisation, diversity, and the breakdown by group."""

import numpy as np
import pytest
import torch
from scipy import linalg

from raysys.quality.groups import FeatureSet, Reference, closest_pairs, groups, measure, s_bin
from raysys.quality.measures import diversity_ratio, fid, kid, memorisation, prdc


def _cloud(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    """n points whose sample mean and (unbiased) sample covariance are exactly `mean` and `cov`."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / (n - 1))).T  # sample covariance: identity
    return torch.from_numpy(mean + z @ np.linalg.cholesky(cov).T)


class FixedLinear(torch.nn.Module):
    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.weight, self.bias = torch.from_numpy(weight), torch.from_numpy(bias)
        self.num_features = weight.shape[0]

    def forward(self, x):
        return x @ self.weight.T + self.bias


def test_fid_of_two_gaussian_clouds_through_a_linear_feature_module_is_the_closed_form():
    rng = np.random.default_rng(0)
    p, d = 6, 4
    mu1, mu2 = rng.normal(size=p), rng.normal(size=p) + 1.0
    a1, a2 = rng.normal(size=(p, p)), rng.normal(size=(p, p))
    cov1, cov2 = a1 @ a1.T + np.eye(p), a2 @ a2.T + 0.5 * np.eye(p)
    weight, bias = rng.normal(size=(d, p)), rng.normal(size=d)
    x, y = _cloud(500, mu1, cov1, 1), _cloud(700, mu2, cov2, 2)
    m1, m2 = weight @ mu1 + bias, weight @ mu2 + bias
    s1, s2 = weight @ cov1 @ weight.T, weight @ cov2 @ weight.T
    root = linalg.sqrtm(linalg.sqrtm(s1) @ s2 @ linalg.sqrtm(s1)).real
    closed = float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * root))
    assert closed > 1.0
    assert fid(x, y, FixedLinear(weight, bias)) == pytest.approx(closed, abs=1e-3)
    # Features given directly: the same figure; a set against itself: 0.
    assert fid(x @ torch.from_numpy(weight).T + torch.from_numpy(bias),
               y @ torch.from_numpy(weight).T + torch.from_numpy(bias)) == pytest.approx(closed, abs=1e-3)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = torch.from_numpy(rng.normal(size=(400, 8))), torch.from_numpy(rng.normal(size=(400, 8)))
    same, _ = kid(a, b)
    shifted, _ = kid(a, b + 1.0)
    assert abs(same) < 0.05 and shifted > 10 * max(abs(same), 1e-3)


def test_precision_recall_density_coverage_on_hand_worked_examples():
    real = torch.tensor([[0.0], [1.0], [3.0]])  # k=1 radii: 1, 1, 2
    # Fakes bunched near the first two real points: all inside real balls (precision 1), no real point
    # inside their tiny balls (recall 0), each in two real balls (density 2), two of three balls hit.
    bunched = prdc(real, torch.tensor([[0.4], [0.6], [0.7]]), k=1)
    assert bunched == pytest.approx({"precision": 1.0, "recall": 0.0, "density": 2.0, "coverage": 2 / 3})
    # One far outlier: precision 2/3; the outlier's huge ball reaches every real point (recall 1).
    spread = prdc(real, torch.tensor([[0.5], [2.6], [10.0]]), k=1)
    assert spread == pytest.approx({"precision": 2 / 3, "recall": 1.0, "density": 1.0, "coverage": 1.0})
    assert prdc(real, torch.tensor([[0.5]]), k=1)["precision"] is None  # k or fewer rows: not measured


def test_memorisation_counts_copies_and_rows_closer_than_their_source_gap():
    train = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [10.0, 10.0]])  # nearest-other gaps 4, 4, 4, 11.66
    fake = torch.tensor([[0.0, 0.0], [4.0, 1.0], [2.0, 2.0], [9.0, 10.0]])
    memo = memorisation(train, fake, source=np.array([1, 1, -1, -1]))
    assert memo["nearest_train"].tolist() == [0, 1, 0, 3]
    # Distance to the nearest train image over that image's own gap: the last row's neighbour lies apart.
    assert memo["nearest_ratio"] == pytest.approx([0.0, 0.25, np.sqrt(8) / 4, 1 / np.sqrt(136)])
    closer = memo["closer_than_source_gap"]
    assert closer[0] == 0.0 and closer[1] == 1.0 and np.isnan(closer[2])  # row 0 is 4 from its source, the gap
    # A train image with an exact duplicate (gap 0) is measured against the median of the other gaps.
    doubled = memorisation(torch.cat([train, train[:1]]), torch.tensor([[1.0, 0.0]]))
    assert doubled["nearest_ratio"] == pytest.approx([1 / 4])


def test_diversity_ratio_is_the_spread_of_the_synthetic_images_over_the_real_ones():
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.normal(size=(50, 4)))
    labels = np.repeat([0, 1], 25)
    ratio, per_class = diversity_ratio(real * 0.5, labels, real, labels)
    assert ratio == pytest.approx(0.5) and per_class == pytest.approx({0: 0.5, 1: 0.5})


def test_groups_cover_lambda_s_tenths_class_groups_and_classes():
    assert [s_bin(s) for s in (0.0, 0.05, 0.1, 0.55, 0.99, 1.0)] == ["0.0-0.1", "0.0-0.1", "0.1-0.2", "0.5-0.6",
                                                                    "0.9-1.0", "0.9-1.0"]
    fake = FeatureSet(torch.zeros(6, 2), np.array([0, 0, 1, 1, 2, 2]),
                      guidance=np.array([0.1, 0.9, 0.1, 0.9, np.nan, np.nan]),
                      requested=np.array([np.nan, np.nan, np.nan, np.nan, 0.25, 0.75]))
    found = {(by, g): rows.tolist() for by, g, _, rows in groups(fake, {0: "many", 1: "few", 2: "few"}, ["a", "b", "c"])}
    assert found == {("overall", "all"): [0, 1, 2, 3, 4, 5], ("lambda", "0.1"): [0, 2], ("lambda", "0.9"): [1, 3],
                     ("s", "0.2-0.3"): [4], ("s", "0.7-0.8"): [5], ("class_group", "many"): [0, 1],
                     ("class_group", "few"): [2, 3, 4, 5], ("class", "a"): [0, 1], ("class", "b"): [2, 3],
                     ("class", "c"): [4, 5]}


def test_measure_compares_each_group_with_the_real_images_of_its_classes_and_marks_small_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 4, [20.0] * 4])
    train_labels = np.repeat([0, 1], 60)
    train = Reference(FeatureSet(torch.from_numpy(centres[train_labels] + rng.normal(size=(120, 4))).float(),
                                 train_labels), k=5)
    # A faithful set of class 1 only: against class 1's train images it is close, though train holds class 0 too.
    fake = FeatureSet(torch.from_numpy(centres[[1] * 60] + rng.normal(size=(60, 4))).float(), np.ones(60, np.int64))
    rows = measure(fake, train, None, {0: "many", 1: "few"}, ["zero", "one"], min_images=50)
    overall = rows[0]
    assert overall["train_images"] == 60 and overall["train_precision"] > 0.8 and overall["train_fid"] < 2.0
    assert overall["copies"] < 0.2 and overall["reliable"]  # fresh draws: a few sit as near as half the train gap
    small = measure(fake.take(np.arange(10)), train, None, {0: "many", 1: "few"}, ["zero", "one"], min_images=50)
    assert not small[0]["reliable"]
    # The closest pairs: a copy of a train image comes first, at distance 0, beside that image.
    copy = FeatureSet(torch.cat([fake.features[:3], train.images.features[7:8].float()]), np.ones(4, np.int64))
    pairs = closest_pairs(["a", "b", "c", "copy"], [f"t{i}" for i in range(120)], copy, train, 2)
    assert pairs[0][:2] == ("copy", "t7") and pairs[0][2] == 0.0 and pairs[1][2] > 0.0


def test_an_extractor_whose_weights_cannot_be_had_says_what_to_do_in_one_line(tmp_path):
    from raysys.quality.features import ExtractorUnavailable, FeatureExtractor, extractor_problems

    missing = tmp_path / "no-such-inception.pth"
    with pytest.raises(ExtractorUnavailable) as found:
        FeatureExtractor("inception", weights=str(missing))
    message = str(found.value)
    assert "\n" not in message and "torch-fidelity" in message and "quality.extractor=classifier" in message
    assert extractor_problems("classifier") == [] and extractor_problems("test_resnet") == []
    assert "neither classifier, inception nor a timm model" in extractor_problems("resnet_no_such")[0]


def test_a_timm_extractor_gives_its_pooled_features_for_grey_and_colour_images():
    from raysys.data.images import encode_png
    from raysys.quality.features import FeatureExtractor

    extract = FeatureExtractor("test_resnet", pretrained=False)
    rng = np.random.default_rng(0)
    grey = [encode_png(rng.integers(0, 256, (12, 12), dtype=np.uint8)) for _ in range(3)]
    colour = [encode_png(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(2)]
    features = extract(grey + colour)
    assert features.shape == (5, 96) and features.dtype == np.float32 and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])
