"""`raysys export` on small manifests: ids that would leave the output folder are refused, class
folders never collide, and labels.csv is written under a temporary name of its own."""

import csv
import hashlib
import os

import numpy as np
import pytest

from raysys.cli import main
from raysys.core.schema import part_file, to_table, write_part
from raysys.data import export
from raysys.data.export import class_folders, export_images
from raysys.data.images import encode_png


def write_manifest_parts(directory, ids, class_names, parts=1):
    """A manifest folder of `parts` parts: one 4x4 PNG per (id, class name), labels by class."""
    labels = {name: i for i, name in enumerate(dict.fromkeys(class_names))}
    rows = list(zip(ids, class_names))
    for p in range(parts):
        chunk = rows[p::parts]
        write_part(to_table({
            "sample_id": [sid for sid, _ in chunk],
            "image": [encode_png(np.full((4, 4), 10 * i, np.uint8)) for i in range(len(chunk))],
            "label": [labels[name] for _, name in chunk],
            "class_name": [name for _, name in chunk],
            "split": ["train"] * len(chunk),
            "origin": ["synthetic"] * len(chunk),
        }), str(directory), part_file(p))
    return str(directory)


def read_labels(out):
    with open(os.path.join(out, "labels.csv"), newline="") as f:
        return list(csv.DictReader(f))


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.parametrize("bad_id", ["../../x", "/abs", "a/b", "a\\b", "..", "", "x\x00y", "x\ny"])
def test_an_id_that_is_not_a_file_name_is_refused_before_anything_is_written(bad_id, tmp_path, capsys):
    source = write_manifest_parts(tmp_path / "manifest", ["good1", bad_id], ["cat", "cat"])
    before = files_under(tmp_path)
    out = tmp_path / "deep" / "er" / "out"
    assert main(["export", source, str(out)]) == 2
    err = capsys.readouterr().err
    assert repr(bad_id) in err and os.path.join(source, part_file(0)) in err and "a valid id" in err
    assert files_under(tmp_path) == before  # not the good row, not labels.csv, nothing outside
    assert not os.path.exists("/abs.png")


def test_a_class_folder_that_links_outside_is_refused(tmp_path):
    source = write_manifest_parts(tmp_path / "manifest", ["a1"], ["cat"])
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "cat").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="outside the output folder"):
        export_images(source, str(out))
    assert list(elsewhere.iterdir()) == []
    assert [p.name for p in out.iterdir()] == ["cat"]  # no labels.csv, no temp file left


def _digest(name):
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def test_class_folders_keep_safe_names_and_never_collide():
    assert class_folders(["猫", "犬", "cat", "dog_2", "v1.0"]) == {
        "猫": "猫", "犬": "犬", "cat": "cat", "dog_2": "dog_2", "v1.0": "v1.0"}
    assert class_folders(["a b", "a_b"]) == {"a b": f"a_b-{_digest('a b')}", "a_b": f"a_b-{_digest('a_b')}"}
    assert class_folders(["Cat", "cat"]) == {"Cat": f"Cat-{_digest('Cat')}", "cat": f"cat-{_digest('cat')}"}
    assert class_folders(["..", "", "../etc"]) == {
        "..": f"class-{_digest('..')}", "": f"class-{_digest('')}", "../etc": f"etc-{_digest('../etc')}"}
    names = ["a b", "a_b", "猫", "x" * 300]
    assert class_folders(names) == class_folders(reversed(names))  # a pure function of the names
    assert len(class_folders(["x" * 300])["x" * 300]) == export.FOLDER_CHARS + 9


def test_non_ascii_classes_land_in_their_own_folders_across_parts(tmp_path):
    names = ["猫", "犬", "猫", "犬", "a b", "a_b"]
    source = write_manifest_parts(tmp_path / "manifest", [f"id{i}" for i in range(6)], names, parts=2)
    out = tmp_path / "out"
    assert export_images(source, str(out)) == 6
    rows = read_labels(out)
    folder = {row["class_name"]: row["file"].split("/")[0] for row in rows}
    assert folder["猫"] == "猫" and folder["犬"] == "犬"
    assert folder["a b"] == f"a_b-{_digest('a b')}" and folder["a_b"] == f"a_b-{_digest('a_b')}"
    for row in rows:
        assert row["file"] == f"{folder[row['class_name']]}/{row['sample_id']}.png" and (out / row["file"]).is_file()
    assert sorted(files_under(out)) == sorted([row["file"] for row in rows] + ["labels.csv"])
    again = tmp_path / "again"
    export_images(source, str(again))
    assert [row["file"] for row in read_labels(again)] == [row["file"] for row in rows]  # stable across runs


def test_exports_write_labels_under_temp_names_of_their_own(tmp_path, monkeypatch):
    source = write_manifest_parts(tmp_path / "manifest", ["a1", "a2"], ["cat", "dog"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.csv.tmp").write_text("another export's rows")  # what a fixed temp name would clobber
    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", recording_replace)
    export_images(source, str(out))
    export_images(source, str(out))
    (first, _), (second, _) = replaced
    assert first != second and first != "labels.csv.tmp"
    assert first.startswith("labels.csv.") and first.endswith(".tmp") and [d for _, d in replaced] == ["labels.csv"] * 2
    assert (out / "labels.csv.tmp").read_text() == "another export's rows"
    assert len(read_labels(out)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["cat", "dog", "labels.csv", "labels.csv.tmp"]


def test_a_failed_export_leaves_no_temp_file(tmp_path, monkeypatch):
    source = write_manifest_parts(tmp_path / "manifest", ["a1", "a2"], ["cat", "cat"])
    out = tmp_path / "out"
    calls = []
    real_write = export.io.write_bytes

    def failing_write(location, data):
        calls.append(location)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(location, data)

    monkeypatch.setattr(export.io, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        export_images(source, str(out))
    assert len(calls) == 2
    assert files_under(out) == ["cat/a1.png"]  # the image before the failure; no labels.csv, no temp file


def test_a_plan_folder_is_exported_through_its_latest_json(tmp_path, capsys):
    plan = tmp_path / "synthesize" / "few"  # <output>/<plan>/<digest>/ per version, latest.json names one
    write_manifest_parts(plan / "aaaa", ["old1", "old2"], ["cat", "dog"])
    newest = write_manifest_parts(plan / "bbbb", ["new1", "new2", "new3"], ["cat", "dog", "cat"])
    (plan / "latest.json").write_text('{"version": "bbbb"}')
    assert main(["export", str(plan), str(tmp_path / "out")]) == 0
    assert sorted(row["sample_id"] for row in read_labels(tmp_path / "out")) == ["new1", "new2", "new3"]
    assert newest in capsys.readouterr().out
    assert export_images(str(plan / "aaaa"), str(tmp_path / "old")) == 2  # a version folder as it is
    for bad in ("../aaaa", "", "/abs"):
        (plan / "latest.json").write_text(f'{{"version": "{bad}"}}')
        assert main(["export", str(plan), str(tmp_path / "bad")]) == 2
        assert "latest.json" in capsys.readouterr().err and not (tmp_path / "bad").exists()
