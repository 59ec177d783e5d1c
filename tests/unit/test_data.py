import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from raysys.core import io as io_
from raysys.core.config import DataConfig, TableColumns
from raysys.core.schema import read_manifest, sample_id, to_table, write_manifest
from raysys.data.images import check_image, decode, encode_png, image_format, resize_encoded
from raysys.data.ingest import write_real_part
from raysys.data.longtail import assign_splits, class_groups, longtail_counts
from raysys.data.sources import DataError, list_source, load_builtin, read_image
from raysys.data.splits import check_data, plan_splits


def _data(**kw) -> DataConfig:
    return DataConfig(**kw)


def test_builtin_sources_have_documented_sizes():
    mnist = load_builtin("mnist")
    assert len(mnist) == 5000 and np.bincount(mnist.labels).tolist() == [500] * 10
    digits = load_builtin("digits")
    assert len(digits) == 1797 and len(digits.class_names) == 10
    img = decode(mnist.images[0], 28, 1)
    assert img.shape == (1, 28, 28) and img.dtype == np.uint8 and img.max() > 200
    assert decode(digits.images[0], 8, 1).max() > 200  # 0..16 scaled to 0..255
    listing = list_source(_data(source="builtin:digits"))
    assert len(listing) == 1797 and listing.class_names == mnist.class_names
    row = listing.table.slice(5, 1).to_pylist()[0]
    assert row["uri"] is None and read_image(row["uri"], row["ref"]) == digits.images[5]  # bytes rebuilt by reference


def _folder(tmp_path, per_class=(3, 2), split=None, name="imgs"):
    root = tmp_path / name
    base = root / split if split else root
    for c, n in enumerate(per_class):
        (base / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((10, 12, 3), 40 * (i + 1) % 256, np.uint8)).save(base / f"class_{c}" / f"{i}.png")
    return root


def test_image_folder_listing_reads_no_image(tmp_path):
    root = _folder(tmp_path)
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "class_0" / "notes.txt").write_text("ignored: not an image suffix")
    listing = list_source(_data(source=f"folder:{root}"))
    assert listing.class_names == ["class_0", "class_1"]
    assert np.bincount(listing.table["label"].to_numpy()).tolist() == [3, 3]  # listed: the check comes later
    assert set(listing.table["split"].to_pylist()) == {""}
    assert listing.table["path"].to_pylist()[0] == "class_0/0.png"
    assert all(u.startswith(str(root)) for u in listing.table["uri"].to_pylist())


def test_folder_with_split_folders_keeps_its_splits(tmp_path):
    root = _folder(tmp_path, (5, 4), split="train")
    _folder(tmp_path, (2, 2), split="test")
    _folder(tmp_path, (1, 0, 2), split="ood_test")  # class_2 has no train image: dropped, counted
    d = _data(source=f"folder:{root}", splits="given", test_splits=["test", "ood_test"], val_per_class=2,
              pretrain_per_class=0, carve_out_share=0.5)
    listing, plan = plan_splits(list_source(d), d, seed=0)
    assert listing.class_names == ["class_0", "class_1"] and listing.dropped == {"class_without_train_images": 2}
    labels = listing.table["label"].to_numpy()
    counts = {s: np.bincount(labels[plan.split == s], minlength=2).tolist() for s in set(plan.split)}
    assert counts == {"train": [3, 2], "val": [2, 2], "test": [2, 2], "ood_test": [1, 0]}
    assert plan.train_counts == [3, 2]
    # every test image stays in its own split: none is drawn into val
    test_paths = [p for p, s in zip(listing.table["path"].to_pylist(), plan.split) if s == "test"]
    assert all(p.startswith("test/") for p in test_paths)
    with pytest.raises(DataError, match="not splits of"):
        plan_splits(list_source(d), _data(source=d.source, splits="given", test_splits=["id_test"]), seed=0)
    # the same folder, resampled: every image pooled
    pooled = list_source(_data(source=f"folder:{root}"))
    assert len(pooled) == 5 + 4 + 2 + 2 + 1 + 2 and len(pooled.class_names) == 3


def test_splits_drawn_from_a_long_tailed_train_split_leave_the_tail_its_images(tmp_path):
    """The issue's reproduction: a train/ + test/ folder with no val/; val (20 per class), and pretrain
    (100) where asked, are drawn from train, each at most carve_out_share (0.2) of a class's train images."""
    given = [9, 25, 34, 6, 93, 13, 18, 48, 67, 130]
    root = _folder(tmp_path, given, split="train")
    _folder(tmp_path, [1] * 10, split="test")

    def counts(**kw):
        d = _data(source=f"folder:{root}", splits="given", val_per_class=20, **kw)
        listing, plan = plan_splits(list_source(d), d, seed=0)
        labels = listing.table["label"].to_numpy()
        per_split = {s: np.bincount(labels[plan.split == s], minlength=10).tolist() for s in ("train", "val", "pretrain")}
        assert per_split["train"] == plan.train_counts
        return per_split, plan.capped

    uncapped, capped = counts(pretrain_per_class=0, carve_out_share=1.0)
    assert uncapped["train"] == [1, 5, 14, 1, 73, 1, 1, 28, 47, 110] and capped == {}  # what the issue saw
    split, capped = counts(pretrain_per_class=0)
    assert split["val"] == [1, 5, 6, 1, 18, 2, 3, 9, 13, 20]  # 20, or a fifth of the class (at least 1)
    assert split["train"] == [8, 20, 28, 5, 75, 11, 15, 39, 54, 110] and capped == {"val": list(range(9))}
    split, capped = counts(pretrain_per_class=100)
    assert split["pretrain"] == [1, 5, 6, 1, 18, 2, 3, 9, 13, 26]
    assert split["train"] == [7, 15, 22, 4, 57, 9, 12, 30, 41, 84]
    assert capped == {"val": list(range(9)), "pretrain": list(range(10))}
    assert check_data(_data(carve_out_share=0)) == ["data.carve_out_share must be in (0, 1], got 0"]


def test_list_files_in_imagenet_lt_format(tmp_path):
    root = _folder(tmp_path, (4, 3))
    lines = {"train": ["class_0/0.png 0", "class_0/1.png 0", "class_0/2.png 0", "class_1/0.png 1", "class_1/1.png 1"],
             "test": ["class_0/3.png 0", "class_1/2.png 1"]}
    files = {}
    for split, rows in lines.items():
        files[split] = str(tmp_path / f"LT_{split}.txt")
        (tmp_path / f"LT_{split}.txt").write_text("\n".join(rows) + "\n")
    d = _data(source=f"lists:{root}", lists=files, splits="given", val_per_class=1, pretrain_per_class=0)
    listing, plan = plan_splits(list_source(d), d, seed=0)
    assert listing.class_names == ["class_0", "class_1"]  # the folder the label's images share
    assert sorted(plan.split.tolist()) == ["test", "test", "train", "train", "train", "val", "val"]
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\n")
    named = list_source(_data(source=f"lists:{root}", lists=files, class_names=str(names)))
    assert named.class_names == ["tench", "goldfish"]
    (tmp_path / "LT_test.txt").write_text("class_0/3.png zero\n")
    with pytest.raises(DataError, match="line 1"):
        list_source(d)


def test_metadata_table_with_split_and_domain_columns(tmp_path):
    root = _folder(tmp_path, (4, 4))
    rows = ["filename,y,split,location"]
    for c in range(2):
        for i in range(4):
            split = "train" if i < 2 else ("id_test" if i == 2 else "test")
            rows.append(f"class_{c}/{i}.png,{c + 7},{split},{'cam' + str(i % 2)}")
    table = tmp_path / "metadata.csv"
    table.write_text("\n".join(rows) + "\n")
    cols = TableColumns(path="filename", label="y", split="split", domain="location")
    d = _data(source=f"table:{table}", columns=cols, image_root=str(root), splits="given",
              split_names={"test": "ood_test"}, test_splits=["id_test", "ood_test"], val_per_class=1,
              pretrain_per_class=0)
    listing, plan = plan_splits(list_source(d), d, seed=0)
    assert listing.class_names == ["7", "8"]  # the labels as text; labels ranked 0..C-1
    assert sorted(set(listing.table["label"].to_pylist())) == [0, 1]
    assert sorted(set(plan.split.tolist())) == ["id_test", "ood_test", "train", "val"]
    assert set(listing.table["domain"].to_pylist()) == {"cam0", "cam1"}
    with pytest.raises(DataError, match=r"no column\(s\) \['where'\]"):
        list_source(_data(source=f"table:{table}", columns=TableColumns(path="where", label="y")))


def test_parquet_manifest_source_and_bad_labels(tmp_path):
    imgs = [encode_png(np.full((4, 4), v, np.uint8)) for v in (0, 100, 200)]
    rows = {
        "sample_id": [sample_id(i) for i in range(3)], "image": imgs, "label": [0, 2, 2],
        "class_name": ["a", "c", "c"], "split": ["train"] * 3, "origin": ["real"] * 3,
    }
    path = str(tmp_path / "m.parquet")
    write_manifest(to_table(rows), path)
    listing = list_source(_data(source=f"parquet:{path}"))
    assert listing.class_names == ["a", "c"] and listing.table["label"].to_pylist() == [0, 1, 1]
    row = listing.table.slice(2, 1).to_pylist()[0]
    assert read_image(row["uri"], row["ref"]) == imgs[2]  # read from its row, by reference
    write_manifest(to_table({**rows, "class_name": ["a", "b", "c"]}), path)
    with pytest.raises(DataError, match="label 2 is both"):
        list_source(_data(source=f"parquet:{path}"))
    write_manifest(to_table({**rows, "label": [0, -1, 1]}), path)
    with pytest.raises(DataError, match="unknown label -1"):
        list_source(_data(source=f"parquet:{path}"))


def test_sources_fail_before_any_work(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list_source(_data(source=f"folder:{tmp_path / 'missing'}"))
    root = _folder(tmp_path)
    (root / "class_empty").mkdir()
    with pytest.raises(DataError, match="class_empty"):
        list_source(_data(source=f"folder:{root}"))
    with pytest.raises(DataError, match="expected one of"):
        list_source(_data(source="ftp:somewhere"))
    assert any("store: uri needs image files" in p for p in check_data(_data(source="builtin:mnist", store="uri")))
    assert any("leave data.val_split" in p for p in check_data(_data(test_splits=["id_test"])))


def test_a_file_name_that_is_not_utf8_is_refused_before_any_work(tmp_path):
    """A Latin-1 file name (bytes b"caf\\xe9.png") was a UnicodeDecodeError traceback: now one DataError
    line that names the file (as its bytes) and says to rename it."""
    root = _folder(tmp_path)
    fd = os.open(os.fsencode(root / "class_0") + b"/caf\xe9.png", os.O_CREAT | os.O_WRONLY)
    os.write(fd, (root / "class_0" / "0.png").read_bytes())
    os.close(fd)
    with pytest.raises(DataError) as err:
        list_source(_data(source=f"folder:{root}"))
    message = str(err.value)
    assert "\n" not in message and "class_0/caf\\xe9.png" in message and "not UTF-8" in message
    assert "rename it" in message
    os.rename(os.fsencode(root / "class_0") + b"/caf\xe9.png", root / "class_0" / "caf\xe9.png")  # renamed: UTF-8
    assert "class_0/caf\xe9.png" in list_source(_data(source=f"folder:{root}")).table["path"].to_pylist()
    os.mkdir(os.fsencode(root / "class_1") + b"/\xff")  # an empty folder whose name is not UTF-8
    with pytest.raises(DataError, match=r"class_1/\\xff' is not UTF-8"):
        list_source(_data(source=f"folder:{root}"))


def test_an_image_folder_in_s3_is_listed_and_read(tmp_path, s3_bucket):
    """folder:s3://... works (on the session's local S3 server): listed and read through pyarrow's
    S3 filesystem; a missing S3 folder is "not found", as a local one is."""
    local = _folder(tmp_path)
    for path in sorted(local.rglob("*.png")):
        io_.write_bytes(io_.join(s3_bucket, "imgs", path.relative_to(local).as_posix()), path.read_bytes())
    d = _data(source=f"folder:{s3_bucket}/imgs")
    assert check_data(d) == []
    listing = list_source(d)
    assert listing.class_names == ["class_0", "class_1"]
    assert listing.table["path"].to_pylist() == ["class_0/0.png", "class_0/1.png", "class_0/2.png",
                                                 "class_1/0.png", "class_1/1.png"]
    for row in listing.table.to_pylist():
        assert row["uri"] == f"{s3_bucket}/imgs/{row['path']}"
        assert read_image(row["uri"], row["ref"]) == (local / row["path"]).read_bytes()
    with pytest.raises(DataError, match=f"image folder not found: {s3_bucket}/elsewhere"):
        list_source(_data(source=f"folder:{s3_bucket}/elsewhere"))


def test_a_part_keeps_readable_images_and_lists_corrupt_ones(tmp_path):
    root = _folder(tmp_path, (3,))
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(root / "class_0" / "big.jpg", quality=90)
    listing = list_source(_data(source=f"folder:{root}"))
    rows = listing.table.set_column(listing.table.schema.get_field_index("split"), "split",
                                    pa.array(["train"] * len(listing)))
    out = str(tmp_path / "manifest")
    summary = write_real_part(rows, out, "part-00000.parquet", store="bytes", store_size=64)
    assert summary["ok"].to_pylist().count(False) == 1
    assert summary.filter(pc.invert(summary["ok"]))["path"].to_pylist() == ["class_0/broken.png"]
    part = read_manifest(out)
    assert len(part) == 4 and set(part["origin"].to_pylist()) == {"real"}
    big = part.filter(pc.equal(part["path"], "class_0/big.jpg"))["image"][0].as_py()
    assert Image.open(io.BytesIO(big)).size == (64, 96) and image_format(big) == "jpeg"  # shorter side 64
    by_ref = str(tmp_path / "by_ref")
    write_real_part(rows, by_ref, "part-00000.parquet", store="uri")
    stored = read_manifest(by_ref, resolve=False)
    assert stored["image"].null_count == 4 and all(stored["uri"].to_pylist())
    resolved = read_manifest(by_ref, columns=["sample_id", "image"])  # asked for: read from the files
    assert resolved["image"].to_pylist() == [(root / p).read_bytes() for p in stored["path"].to_pylist()]


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


def _encoded(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _png_rgb16(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one): signature, IHDR, one IDAT, IEND."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_32_bit_and_float_images_decode_to_their_8_bit_gradient():
    """16-bit PNG/TIFF were clipped to white (all but 0 decoded as 255): each now decodes to the same 8-bit
    gradient as its 8-bit version, within one level; 32-bit and float ones by their range."""
    g8 = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    g16 = g8.astype(np.uint16) * 257
    expected = {1: decode(_encoded(Image.fromarray(g8), "PNG"), 256, 1).astype(int),
                3: decode(_encoded(Image.fromarray(np.stack([g8] * 3, -1)), "PNG"), 256, 3).astype(int)}
    assert expected[1][0, 0].tolist() == list(range(256))
    images = {
        "I;16 PNG": _encoded(Image.fromarray(g16), "PNG"),
        "I;16 TIFF": _encoded(Image.fromarray(g16), "TIFF"),
        "I TIFF, 16-bit values": _encoded(Image.fromarray(g16.astype(np.int32)), "TIFF"),
        "I TIFF, wider values: by its range": _encoded(Image.fromarray(g8.astype(np.int32) * 1000 - 7000), "TIFF"),
        "F TIFF, 0..1": _encoded(Image.fromarray(g16.astype(np.float32) / 65535), "TIFF"),
        "F TIFF, wider values: by its range": _encoded(Image.fromarray(g8.astype(np.float32) * 3.5 - 2), "TIFF"),
        "RGB 16-bit PNG": _png_rgb16(np.stack([g16] * 3, -1)),
    }
    for name, data in images.items():
        for channels in (1, 3):
            got = decode(data, 256, channels).astype(int)
            assert np.abs(got - expected[channels]).max() <= 1, (name, channels, got[0, 0, ::32])
    assert check_image(images["I;16 TIFF"]) == (256, 256)
    flat = _encoded(Image.fromarray(np.full((4, 4), 3.0, np.float32)), "TIFF")  # constant beyond 0..1: black
    assert decode(flat, 4, 1).max() == 0


def test_an_exif_rotated_jpeg_decodes_upright():
    """A JPEG stored rotated with EXIF Orientation 6 (shown rotated 90 degrees clockwise) decodes equal to
    the upright image, within JPEG tolerance; check_image gives the upright size; a stored resized copy
    is upright too (it had lost the tag, and so its orientation)."""
    upright = np.zeros((32, 48, 3), np.uint8)  # 32 high, 48 wide: white left third, red top right
    upright[:, :16] = 255
    upright[:16, 32:] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _encoded(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    assert Image.open(io.BytesIO(rotated)).size == (32, 48)  # as stored
    assert check_image(rotated) == (48, 32)
    want = decode(_encoded(Image.fromarray(upright), "PNG"), 24, 3).astype(int)
    got = decode(rotated, 24, 3).astype(int)
    assert np.abs(got - want).mean() < 4 and np.abs(got - want).max() < 60
    assert np.abs(got - np.rot90(want, 1, axes=(1, 2))).mean() > 50  # the stored (unrotated) pixels differ a lot
    small = resize_encoded(rotated, 16)
    assert check_image(small) == (24, 16)
    assert np.abs(decode(small, 24, 3).astype(int) - want).mean() < 6


def test_transparent_pixels_decode_as_white():
    """RGBA / LA / palette transparency was dropped, showing the colour the transparent pixels hold (pure
    red here): they are composited onto white; half-transparent black is mid gray."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 0)  # left: transparent red
    rgba[:, 4:] = (0, 0, 255, 255)  # right: opaque blue
    rgba[0, 4:] = (0, 0, 0, 128)  # top row right: half-transparent black
    data = _encoded(Image.fromarray(rgba, "RGBA"), "PNG")
    out = decode(data, 8, 3)
    assert out[:, :, :4].tolist() == np.full((3, 8, 4), 255).tolist()
    assert out[:, 1:, 4:].transpose(1, 2, 0).reshape(-1, 3).tolist() == [[0, 0, 255]] * 28
    assert np.abs(out[:, 0, 4:].astype(int) - 127).max() <= 1
    assert decode(data, 8, 1)[0, :, :4].min() == 255
    la = np.zeros((8, 8, 2), np.uint8)
    la[:, :4] = (0, 0)  # transparent black
    la[:, 4:] = (60, 255)
    assert decode(_encoded(Image.fromarray(la, "LA"), "PNG"), 8, 1)[0, 0].tolist() == [255] * 4 + [60] * 4
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])  # 0: red, made transparent; 1: green
    palette.paste(1, (4, 0, 8, 8))
    out = decode(_encoded(palette, "PNG", transparency=0), 8, 3)
    assert out[:, 0].transpose(1, 0).tolist() == [[255, 255, 255]] * 4 + [[0, 255, 0]] * 4
    big = np.zeros((40, 40, 4), np.uint8)
    big[..., 0] = 255  # all transparent red: the stored resized copy is white too
    assert decode(resize_encoded(_encoded(Image.fromarray(big, "RGBA"), "PNG"), 20), 20, 3).min() == 255
