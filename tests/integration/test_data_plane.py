"""The data plane on Ray Data: every source kind with its own splits, URIs through pyarrow
filesystems (a local S3 server), corrupt files, and a killed prepare run again."""

from __future__ import annotations

import os
import time

import duckdb
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from PIL import Image

from raysys.cli import main
from raysys.core import io, run_layout
from raysys.core.schema import MANIFEST_SCHEMA, list_parts, read_manifest
from raysys.stages import load_config, prepare
from tests.conftest import REPO, TINY, kill_driver, start_driver

pytestmark = pytest.mark.integration

GIVEN = ["data.splits=given", "data.channels=3", "data.pretrain_per_class=1", "data.val_per_class=2",
         "data.carve_out_share=0.5", "data.rows_per_part=7"]


def _image(value: int, size=(14, 12)) -> Image.Image:
    rng = np.random.default_rng(value)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _split_folder(root, counts: dict[str, tuple[int, ...]], suffix=".png"):
    """root/<split>/<class>/<i>.png with counts[split][c] images of class c."""
    for split, per_class in counts.items():
        for c, n in enumerate(per_class):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _image(hash((split, c, i)) % 10_000).save(folder / f"{i}{suffix}")
    return root


def _counts(table, split):
    labels = table.filter(pc.equal(table["split"], split))["label"].to_numpy()
    return np.bincount(labels, minlength=2).tolist()


def test_folder_with_its_own_splits_and_an_ood_split(tmp_path, ray_session):
    root = _split_folder(tmp_path / "imgs", {"train": (9, 6), "test": (3, 2), "ood_test": (2, 2)})
    cfg = load_config(TINY, [f"run.root={tmp_path / 'run'}", f"data.source=folder:{root}", *GIVEN,
                             "data.test_splits=[test, ood_test]"])
    m = prepare.run(cfg)
    assert m["counts"] == {"train": [6, 3], "ood_test": [2, 2], "pretrain": [1, 1], "test": [3, 2], "val": [2, 2]}
    assert m["rows"] == 24 and m["parts"] == 4 and m["bad_files_count"] == 0  # 7 rows per part
    folder = run_layout.real_manifest(cfg)
    table = read_manifest(folder)
    assert table.schema == MANIFEST_SCHEMA and len(table) == 24
    assert all(p.startswith("test/") for p in table.filter(pc.equal(table["split"], "test"))["path"].to_pylist())
    # other tools read the folder as it is
    assert len(pd.read_parquet(folder)) == 24
    assert duckdb.sql(f"SELECT count(*) FROM '{folder}/*.parquet' WHERE split = 'ood_test'").fetchall()[0][0] == 4
    # the images are the files' own bytes
    row = table.filter(pc.equal(table["path"], "train/class_1/3.png")).to_pylist()[0]
    assert row["image"] == (root / "train" / "class_1" / "3.png").read_bytes()


def test_list_files_and_a_metadata_table_with_domains(tmp_path, ray_session):
    root = _split_folder(tmp_path / "imgs", {"train": (8, 5), "val": (2, 2), "test": (3, 3)}, suffix=".jpg")
    lists = {}
    for split in ("train", "val", "test"):
        lines = [f"{split}/class_{c}/{f.name} {c}" for c in range(2)
                 for f in sorted((root / split / f"class_{c}").iterdir())]
        lists[split] = str(tmp_path / f"ImageNet_LT_{split}.txt")
        (tmp_path / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")
    lists_arg = "{" + ", ".join(f"{k}: {v}" for k, v in lists.items()) + "}"
    cfg = load_config(TINY, [f"run.root={tmp_path / 'lists'}", f"data.source=lists:{root}", f"data.lists={lists_arg}",
                             *GIVEN])
    m = prepare.run(cfg)
    assert m["counts"] == {"train": [7, 4], "pretrain": [1, 1], "test": [3, 3], "val": [2, 2]}  # val given: not drawn
    assert m["class_names"] == ["class_0", "class_1"]

    rows = ["filename,y,split,location"]
    for path, split in [(p, s) for s in ("train", "test") for p in sorted((root / s).rglob("*.jpg"))]:
        rel = path.relative_to(root).as_posix()
        c = int(rel.split("/")[1][-1])
        location = "cam_a" if split == "train" or rel.endswith(("0.jpg", "1.jpg")) else "cam_z"
        rows.append(f"{rel},{c},{'id_test' if split == 'test' and location == 'cam_a' else split},{location}")
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(TINY, [
        f"run.root={tmp_path / 'table'}", f"data.source=table:{tmp_path / 'metadata.csv'}", f"data.image_root={root}",
        "data.columns={path: filename, label: y, split: split, domain: location}",
        "data.split_names={test: ood_test}", "data.test_splits=[id_test, ood_test]", *GIVEN])
    m = prepare.run(cfg)
    assert m["counts"]["id_test"] == [2, 2] and m["counts"]["ood_test"] == [1, 1] and m["has_domains"]
    table = read_manifest(run_layout.real_manifest(cfg), columns=["split", "domain"])
    domains = dict(zip(table["split"].to_pylist(), table["domain"].to_pylist()))
    assert domains["ood_test"] == "cam_z" and domains["id_test"] == "cam_a"


def test_a_source_and_a_run_root_on_s3(tmp_path, s3_bucket, ray_session):
    """The images in an S3 bucket, stored by reference; the run root in S3 too; nothing local."""
    local = _split_folder(tmp_path / "imgs", {"train": (6, 4), "test": (2, 2)})
    fs, _ = io.filesystem(s3_bucket)
    for path in sorted(local.rglob("*.png")):
        io.write_bytes(io.join(s3_bucket, "imgs", path.relative_to(local).as_posix()), path.read_bytes())
    root = io.join(s3_bucket, "run")
    work = tmp_path / "cwd"
    work.mkdir()
    os.chdir(work)
    try:
        assert main(["prepare", str(TINY), f"run.root={root}", f"data.source=folder:{s3_bucket}/imgs", "data.store=uri",
                     *GIVEN]) == 0
    finally:
        os.chdir(REPO)
    metrics = io.read_json(io.join(root, "prepare", "metrics.json"))
    assert metrics["status"] == "done" and metrics["counts"]["test"] == [2, 2]
    stored = read_manifest(io.join(root, "prepare", "manifest"), resolve=False)
    assert stored["image"].null_count == len(stored) == 14
    assert all(u.startswith(f"{s3_bucket}/imgs/") for u in stored["uri"].to_pylist())
    images = read_manifest(io.join(root, "prepare", "manifest"), columns=["path", "image"])
    assert images["image"].to_pylist() == [(local / p).read_bytes() for p in images["path"].to_pylist()]
    assert list(work.iterdir()) == []  # nothing reached the local disk


def test_corrupt_files_are_counted_and_listed_never_fatal(tmp_path, ray_session):
    root = _split_folder(tmp_path / "imgs", {"train": (6, 6), "test": (2, 2)})
    (root / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "test" / "class_1" / "empty.jpg").write_bytes(b"")
    cfg = load_config(TINY, [f"run.root={tmp_path / 'run'}", f"data.source=folder:{root}", *GIVEN])
    m = prepare.run(cfg)
    assert m["bad_files_count"] == 2 and m["images_read"] == 18 and m["rows"] == 16
    assert sorted(b["path"] for b in m["bad_files"]) == ["test/class_1/empty.jpg", "train/class_0/broken.png"]
    assert io.read_json(os.path.join(prepare.stage_dir(cfg).path, "bad_files.json")) == m["bad_files"]
    assert m["counts"]["test"] == [2, 2]


def test_a_killed_prepare_run_again_gives_the_same_manifest(tmp_path, ray_session):
    overrides = ["data.source=builtin:mnist", "data.image_size=28", "data.max_per_class=200", "data.rows_per_part=8"]
    root = tmp_path / "killed"
    proc = start_driver(ray_session, ["prepare", str(TINY), f"run.root={root}", *overrides])
    folder = str(root / "prepare" / "manifest")
    deadline = time.time() + 180
    try:
        while len(list_parts(folder)) < 5 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        kill_driver(proc, ray_session)
    written = len(list_parts(folder))
    cfg = load_config(TINY, [f"run.root={root}", *overrides])
    assert not prepare.stage_dir(cfg).is_complete()
    m = prepare.run(cfg)
    assert 5 <= written < m["parts"]  # killed part-way, then finished

    clean = load_config(TINY, [f"run.root={tmp_path / 'clean'}", *overrides])
    assert prepare.run(clean)["counts"] == m["counts"]
    resumed, uninterrupted = read_manifest(run_layout.real_manifest(cfg)), read_manifest(run_layout.real_manifest(clean))
    assert resumed.equals(uninterrupted)  # the same rows, in the same order, image bytes included
    assert [os.path.basename(p) for p in list_parts(run_layout.real_manifest(cfg))] == \
        [os.path.basename(p) for p in list_parts(run_layout.real_manifest(clean))]


@pytest.mark.slow
def test_a_folder_with_train_and_test_runs_end_to_end_on_its_own_test_images(folder_run):
    """`raysys run` on root/train/<class>/ and root/test/<class>/ (conftest's folder_run): val and
    pretrain are drawn from train, and every evaluation is on the folder's own test images."""
    from raysys.stages import curriculum, evaluate
    from raysys.core.comparison import variant_config

    cfg, root = folder_run
    prep = prepare.stage_dir(cfg).metrics()
    assert prep["counts"]["test"] == [15] * 10 and prep["counts"]["val"] == [10] * 10
    assert prep["counts"]["pretrain"] == [20] * 10
    table = read_manifest(run_layout.real_manifest(cfg), columns=["split", "path"])
    paths = dict(zip(table["path"].to_pylist(), table["split"].to_pylist()))
    assert {s for p, s in paths.items() if p.startswith("test/")} == {"test"}
    assert all(p.startswith("train/") for p, s in paths.items() if s != "test")
    for name in ("real_only", "dts"):
        run = curriculum.stage_dir(variant_config(cfg, name, 0)).metrics()
        final = run["epochs"][-1]["tests"]["test"]
        assert final["images"] == 150 and final["acc"] == run["acc"]
    ev = evaluate.stage_dir(cfg).metrics()
    assert set(ev["variants"]["dts"]["test_splits"]) == {"test"}
    assert (root / "report" / "index.html").is_file()


@pytest.mark.slow
def test_the_camera_digits_run_end_to_end_with_domain_metrics(tmp_path, ray_session):
    """`raysys run` on builtin:mnist-cameras (the low-quality task, tiny fits): the given splits with
    their cameras, OOD and ID macro-F1 and worst-camera accuracy per variant, their paired
    comparison per split, hard sources above a measured-difficulty threshold, and the report's
    camera x λ grid."""
    from raysys.data.cameras import OOD_CAMERAS, TRAIN_CAMERAS
    from raysys.stages import curriculum, evaluate
    from raysys.core.comparison import variant_config

    overrides = [f"run.root={tmp_path / 'run'}", "data.source=builtin:mnist-cameras", "data.splits=given",
                 "data.test_splits=[ood_test, id_test]", "score.mode=full", "curriculum.epochs=3",
                 "compare.seeds=[0]", "train.epochs=6", "pretrain.steps=30",
                 "finetune.variants=[plain]", "finetune.steps=5",  # no plan uses it; the stage still runs
                 "synthesis.plans=[{name: discl, model: base, kind: discl, sources: threshold, "
                 "source_threshold: 0.6, guidance_levels: [0.3, 0.7], seeds_per_source: 1}]",
                 "curriculum.guidance_val_sources=6",
                 "compare.variants={real_only: {schedule: real_only}, "
                 "adaptive: {schedule: adaptive, plans: [discl], curriculum_epochs: 2}}"]
    assert main(["run", str(TINY), *overrides]) == 0
    cfg = load_config(TINY, overrides)
    prep = prepare.stage_dir(cfg).metrics()
    assert prep["has_domains"] and sum(prep["counts"]["ood_test"]) == 450 and sum(prep["counts"]["pretrain"]) == 1000
    run = curriculum.stage_dir(variant_config(cfg, "adaptive", 0)).metrics()
    tests = run["epochs"][-1]["tests"]
    assert set(tests["ood_test"]["domain_acc"]) == {c.name for c in OOD_CAMERAS}
    assert set(tests["id_test"]["domain_acc"]) == {c.name for c in TRAIN_CAMERAS}
    for split in ("ood_test", "id_test"):
        assert tests[split]["worst_domain_acc"] == pytest.approx(min(tests[split]["domain_acc"].values()), abs=1e-6)
    ev = evaluate.stage_dir(cfg).metrics()
    comp = ev["comparisons"]["adaptive"]["test_splits"]
    assert set(comp) == {"ood_test", "id_test"}
    f1 = [ev["variants"][v]["test_splits"]["ood_test"]["macro_f1"]["per_seed"][0] for v in ("adaptive", "real_only")]
    assert comp["ood_test"]["macro_f1"]["mean_diff"] == pytest.approx(f1[0] - f1[1])
    worst = ev["variants"]["adaptive"]["test_splits"]["ood_test"]["worst_domain_acc"]["per_seed"]
    assert worst == [pytest.approx(tests["ood_test"]["worst_domain_acc"])]
    report = (tmp_path / "run" / "report" / "index.md").read_text()
    assert "domain_x_lambda_grid.png" in report and "worst domain %" in report
    assert "adaptive on ood_test: macro-F1" in report
