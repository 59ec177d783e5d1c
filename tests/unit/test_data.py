import numpy as np
import pytest
from PIL import Image

from raysys.core.schema import sample_id, to_table, write_manifest
from raysys.data.images import decode, decode_batch, encode_png
from raysys.data.longtail import assign_splits, class_groups, longtail_counts
from raysys.data.sources import DataError, load_source


def test_builtin_sources_have_documented_sizes():
    mnist = load_source("builtin:mnist")
    assert len(mnist) == 5000 and np.bincount(mnist.labels).tolist() == [500] * 10
    digits = load_source("builtin:digits")
    assert len(digits) == 1797 and len(digits.class_names) == 10
    img = decode(mnist.images[0], 28, 1)
    assert img.shape == (1, 28, 28) and img.dtype == np.uint8 and img.max() > 200
    assert decode(digits.images[0], 8, 1).max() > 200  # 0..16 scaled to 0..255


def _folder(tmp_path, per_class=(3, 2)):
    root = tmp_path / "imgs"
    for c, n in enumerate(per_class):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((10, 12, 3), 40 * (i + 1), np.uint8)).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_image_folder_counts_and_lists_corrupt_files(tmp_path):
    root = _folder(tmp_path)
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "class_0" / "notes.txt").write_text("ignored: not an image suffix")
    src = load_source(f"folder:{root}")
    assert src.class_names == ["class_0", "class_1"]
    assert np.bincount(src.labels).tolist() == [3, 2]
    assert len(src.bad_files) == 1 and src.bad_files[0]["path"].endswith("broken.png")
    assert decode_batch(src.images, 8, 3).shape == (5, 3, 8, 8)


def test_image_folder_errors_before_work(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_source(f"folder:{tmp_path / 'missing'}")
    root = _folder(tmp_path)
    (root / "class_empty").mkdir()
    with pytest.raises(DataError, match="class_empty"):
        load_source(f"folder:{root}")
    with pytest.raises(DataError, match="expected builtin"):
        load_source("ftp:somewhere")


def test_parquet_source_and_unknown_label(tmp_path):
    imgs = [encode_png(np.full((4, 4), v, np.uint8)) for v in (0, 100, 200)]
    rows = {
        "sample_id": [sample_id(i) for i in range(3)], "image": imgs, "label": [0, 1, 1],
        "class_name": ["a", "b", "b"], "split": ["train"] * 3, "origin": ["real"] * 3,
    }
    path = str(tmp_path / "m.parquet")
    write_manifest(to_table(rows), path)
    src = load_source(f"parquet:{path}")
    assert src.class_names == ["a", "b"] and src.labels.tolist() == [0, 1, 1]
    write_manifest(to_table({**rows, "label": [0, 2, 2], "class_name": ["a", "c", "c"]}), path)
    with pytest.raises(DataError, match=r"labels \[1\] have no images"):
        load_source(f"parquet:{path}")
    write_manifest(to_table({**rows, "label": [0, -1, 1]}), path)
    with pytest.raises(DataError, match="unknown label -1"):
        load_source(f"parquet:{path}")


def test_longtail_profile_matches_ratio():
    counts = longtail_counts(10, 400, 50)
    assert counts[0] == 400 and counts[-1] == 8
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_splits_are_disjoint_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 500)
    kwargs = dict(max_per_class=300, imbalance_ratio=50, val_per_class=20, test_per_class=50,
                  pretrain_per_class=100)
    plan = assign_splits(labels, 10, seed=0, **kwargs)
    for split, expected in (("val", 20), ("test", 50), ("pretrain", 100)):
        assert np.bincount(labels[plan.split == split], minlength=10).tolist() == [expected] * 10
    assert np.bincount(labels[plan.split == "train"], minlength=10).tolist() == plan.train_counts
    assert plan.train_counts == longtail_counts(10, 300, 50)
    # each image is in at most one split (the array holds one split per image), the rest unused
    assert (plan.split == "").sum() == 5000 - sum(plan.train_counts) - 10 * 170
    again = assign_splits(labels, 10, seed=0, **kwargs)
    other = assign_splits(labels, 10, seed=1, **kwargs)
    assert (again.split == plan.split).all() and (other.split != plan.split).any()


def test_split_too_large_is_a_clear_error():
    labels = np.repeat(np.arange(3), 50)
    with pytest.raises(DataError, match="class 0 has 50 images but the split needs"):
        assign_splits(labels, 3, max_per_class=40, imbalance_ratio=2, val_per_class=10,
                      test_per_class=10, pretrain_per_class=0, seed=0)


def test_natural_distribution_keeps_the_rest():
    labels = np.repeat(np.arange(2), [30, 12])
    plan = assign_splits(labels, 2, max_per_class=0, imbalance_ratio=1, val_per_class=2,
                         test_per_class=2, pretrain_per_class=0, seed=0)
    assert plan.train_counts == [26, 8]


def test_class_groups_use_thresholds():
    groups = class_groups([300, 101, 100, 20, 19, 6], many_threshold=100, few_threshold=20)
    assert groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}


def test_prepare_stage_lists_corrupt_files_in_metrics(tmp_path):
    from raysys.stages import load_config
    from raysys.core.schema import read_manifest
    from raysys.stages import prepare
    from tests.conftest import TINY

    root = _folder(tmp_path, per_class=(6, 6))
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = load_config(TINY, [f"run.root={tmp_path / 'run'}", f"data.source=folder:{root}", "data.max_per_class=3",
                             "data.imbalance_ratio=1", "data.val_per_class=1", "data.test_per_class=1",
                             "data.pretrain_per_class=1", "data.channels=3"])
    metrics = prepare.run(cfg)
    assert metrics["images_read"] == 13 and metrics["bad_files_count"] == 1
    assert metrics["bad_files"][0]["path"].endswith("broken.png")
    assert metrics["counts"]["train"] == [3, 3] and metrics["class_names"] == ["class_0", "class_1"]
    assert len(read_manifest(prepare.manifest_path(cfg))) == 12
