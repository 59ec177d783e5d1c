"""builtin:mnist-cameras (raysys/data/cameras.py): the low-quality, domain-shifted built-in dataset,
its listing through the data plane's given splits, and the domain metrics it is evaluated with."""

from collections import Counter

import numpy as np
import pytest

from raysys.report import statistics
from raysys.core.config import DataConfig
from raysys.data import cameras
from raysys.data.cameras import OOD_CAMERAS, OOD_VAL_CAMERAS, TRAIN_CAMERAS, Camera, camera_digits, degrade
from raysys.data.sources import list_source, read_image
from raysys.data.splits import check_data, plan_splits
from raysys.training.metrics import classification_metrics

CAMERAS = DataConfig(source="builtin:mnist-cameras", splits="given", test_splits=["id_test", "ood_test"])


def test_splits_domains_and_counts():
    d = camera_digits()
    splits, domains, labels = np.asarray(d.splits), np.asarray(d.domains), d.labels
    assert d.pixels.shape == (len(labels), 28, 28) and d.pixels.dtype == np.uint8
    train_names = {c.name for c in TRAIN_CAMERAS}
    ood_names = {c.name for c in OOD_CAMERAS}
    assert set(domains[splits == "pretrain"]) == {"clean"}
    assert Counter(labels[splits == "pretrain"].tolist()) == {c: cameras.PRETRAIN_PER_CLASS for c in range(10)}
    for split in ("train", "val", "id_test"):
        assert set(domains[splits == split]) == train_names, split
    assert set(domains[splits == "ood_test"]) == ood_names  # cameras never seen in training
    ood_val_names = {c.name for c in OOD_VAL_CAMERAS}  # validation out of domain: cameras of its own
    assert set(domains[splits == "ood_val"]) == ood_val_names and not ood_val_names & (train_names | ood_names)
    for cam in ood_val_names:
        assert Counter(labels[(splits == "ood_val") & (domains == cam)].tolist()) == {
            c: cameras.OOD_VAL_PER_CAMERA_CLASS for c in range(10)}
    for cam in train_names:  # every training camera in validation, with every class
        assert Counter(labels[(splits == "val") & (domains == cam)].tolist()) == {
            c: cameras.VAL_PER_CAMERA_CLASS for c in range(10)}
        assert Counter(labels[(splits == "id_test") & (domains == cam)].tolist()) == {
            c: cameras.ID_TEST_PER_CAMERA_CLASS for c in range(10)}
    for cam in ood_names:
        assert Counter(labels[(splits == "ood_test") & (domains == cam)].tolist()) == {
            c: cameras.OOD_PER_CAMERA_CLASS for c in range(10)}


def test_train_is_long_tailed_and_the_tail_differs_by_camera():
    d = camera_digits()
    splits, domains, labels = np.asarray(d.splits), np.asarray(d.domains), d.labels
    total = np.bincount(labels[splits == "train"], minlength=10)
    assert total.max() / total.min() >= 10  # long-tailed overall
    assert total[:3].sum() > 4 * total[-3:].sum()  # the high labels are the tail
    per_camera = [np.bincount(labels[(splits == "train") & (domains == c.name)], minlength=10) for c in TRAIN_CAMERAS]
    for counts in per_camera:
        assert counts.max() == cameras.TRAIN_MAX and counts.min() >= 1
        assert counts.max() / counts.min() >= cameras.TRAIN_RATIO / 2
    assert len({int(np.argmax(c)) for c in per_camera}) > 1 or len({tuple(np.argsort(c)) for c in per_camera}) > 1


def test_cameras_degrade_and_are_deterministic():
    d = camera_digits()
    clean = d.pixels[np.asarray(d.splits) == "pretrain"][:50]
    for camera in TRAIN_CAMERAS + OOD_CAMERAS + OOD_VAL_CAMERAS:  # every camera changes what it sees
        seen = np.stack([degrade(x, camera, np.random.default_rng(i)) for i, x in enumerate(clean)])
        assert np.abs(seen.astype(float) - clean).mean() > 5, camera.name
    digit = d.pixels[0]
    night = Camera("night", light=0.3, noise=20.0, jpeg=20)
    a = degrade(digit, night, np.random.default_rng(5))
    assert np.array_equal(a, degrade(digit, night, np.random.default_rng(5)))
    assert a.mean() < 0.5 * digit.mean()  # low light
    assert np.array_equal(degrade(digit, Camera("none"), np.random.default_rng(0)), digit)  # nothing to do
    blurred = degrade(digit, Camera("blur", blur=1.5), np.random.default_rng(0))
    assert np.abs(np.diff(blurred.astype(float), axis=1)).mean() < np.abs(np.diff(digit.astype(float), axis=1)).mean()


def test_listed_with_its_own_splits_and_cameras():
    listing = list_source(CAMERAS)
    d = camera_digits()
    assert len(listing) == len(d.labels)
    assert listing.table["split"].to_pylist() == d.splits and listing.table["domain"].to_pylist() == d.domains
    listing, plan = plan_splits(listing, CAMERAS, seed=0)
    assert Counter(plan.split.tolist()) == Counter(d.splits)  # pretrain and val as given, nothing drawn
    row = 1234
    png = read_image(None, listing.table["ref"][row].as_py())
    from PIL import Image
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), d.pixels[row])
    assert check_data(CAMERAS) == []
    [problem] = check_data(DataConfig(source="builtin:mnist-cameras"))
    assert "data.splits: given" in problem and "id_test, ood_test" in problem


def test_domain_accuracy_and_worst_domain_by_hand():
    y = np.array([0, 1, 1, 0, 1, 0])
    p = np.array([0, 1, 0, 0, 0, 0])
    m = classification_metrics(y, p, 2, {}, domains=["a", "a", "b", "b", "c", None])
    assert m["domain_acc"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert m["worst_domain_acc"] == 0.0
    assert classification_metrics(y, p, 2, {})["worst_domain_acc"] is None
    assert classification_metrics(y, p, 2, {}, domains=[None] * 6)["domain_acc"] is None
    # metrics.json keeps 6 decimals per domain; the worst domain is the exact accuracy (1/3 here)
    thirds = classification_metrics(np.zeros(6, int), np.array([0, 1, 1, 0, 0, 0]), 2, {}, domains=list("aaabbb"))
    assert thirds["domain_acc"] == {"a": 0.333333, "b": 1.0} and thirds["worst_domain_acc"] == 1 / 3


def test_paired_comparison_per_test_split():
    def splits(id_f1, ood_f1):
        return {"id_test": {"macro_f1": {"per_seed": id_f1}, "worst_domain_acc": {"per_seed": [0.5] * len(id_f1)}},
                "ood_test": {"macro_f1": {"per_seed": ood_f1}, "worst_domain_acc": {"per_seed": [0.4] * len(ood_f1)}}}

    out = statistics.compare_splits(splits([0.5, 0.6, 0.7], [0.3, 0.3, 0.3]), splits([0.6, 0.5, 0.8], [0.2, 0.25, 0.35]))
    assert out["id_test"]["macro_f1"]["seeds_won"] == 2
    assert out["id_test"]["macro_f1"]["mean_diff"] == pytest.approx(0.1 / 3)
    assert out["id_test"]["verdict"] == "beats"
    assert out["ood_test"]["macro_f1"]["mean_diff"] == pytest.approx(-0.1 / 3)
    assert out["ood_test"]["verdict"] == "does not beat" and out["ood_test"]["macro_f1"]["seeds_won"] == 1
    assert out["ood_test"]["worst_domain_acc"]["mean_diff"] == pytest.approx(0.0)
    assert statistics.compare_splits({"test": {}}, {"test": {}}) == {}
