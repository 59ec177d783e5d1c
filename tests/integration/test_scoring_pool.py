"""The Ray Data actor pool gives exactly the scores of the in-process scorer, row for row, part by part."""

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from raysys.core.config import ScoreConfig
from raysys.core.schema import list_parts, read_manifest, sample_id, to_table, write_part
from raysys.data.sources import load_builtin_digits
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.ray.scoring import score_manifest
from raysys.scoring.difficulty import DifficultyScorer

pytestmark = pytest.mark.integration


def test_actor_pool_matches_in_process_scores(tmp_path, ray_session):
    torch.manual_seed(0)
    src = load_builtin_digits()
    n = 600
    dirs = {}
    for key in ("a", "b"):  # two models, rows alternate between them
        save_classifier(create_classifier("small_cnn", 10, 1, width=8), str(tmp_path / key),
                        {"name": "small_cnn", "num_classes": 10, "in_chans": 1, "width": 8, "image_size": 8})
        dirs[key] = str(tmp_path / key)
    ids = [sample_id("real", i) for i in range(n)]
    splits = ["train" if i % 5 else "pretrain" for i in range(n)]  # pretrain rows are not scored
    source = str(tmp_path / "manifest")
    for p, start in enumerate(range(0, n, 128)):  # five parts
        rows = slice(start, min(start + 128, n))
        write_part(to_table({"sample_id": ids[rows], "image": src.images[rows], "label": src.labels[rows].tolist(),
                             "class_name": [str(c) for c in src.labels[rows]], "split": splits[rows],
                             "origin": ["real"] * len(ids[rows])}), source, f"part-{p:05d}.parquet")
    keys = {sid: ("a" if i % 3 else "b") for i, sid in enumerate(ids)}
    cfg = ScoreConfig(batch_size=64, min_actors=1, max_actors=2)
    out = str(tmp_path / "scored")
    summary = score_manifest(source, out, dirs, keys, ["train"], cfg, total=n, with_full=False)
    wanted = [i for i in range(n) if splits[i] == "train"]
    assert sorted(summary["sample_id"].to_pylist()) == sorted(ids[i] for i in wanted)
    assert [p.rsplit("/", 1)[-1] for p in list_parts(out)] == [p.rsplit("/", 1)[-1] for p in list_parts(source)]
    scored = read_manifest(out)
    assert scored["sample_id"].to_pylist() == ids  # every row kept, in order; images as they were
    assert scored["image"].to_pylist() == src.images[:n]
    expected = DifficultyScorer(dirs)([src.images[i] for i in wanted], src.labels[wanted], [keys[ids[i]] for i in wanted])
    train = scored.filter(pc.equal(scored["split"], "train"))
    for name in ("difficulty", "p_true", "loss", "entropy"):
        assert np.allclose(train[name].to_numpy(), expected[name], atol=1e-5), name
    assert (train["pred"].to_numpy() == expected["pred"]).all()
    assert train["score_mode"].to_pylist() == [keys[ids[i]] for i in wanted]
    assert scored.filter(pc.equal(scored["split"], "pretrain"))["difficulty"].null_count == n // 5
    # the two models really differ, so a row scored by the wrong one would be caught
    both_a = DifficultyScorer(dirs)([src.images[i] for i in wanted], src.labels[wanted], ["a"] * len(wanted))
    assert not np.allclose(both_a["p_true"], expected["p_true"], atol=1e-3)
