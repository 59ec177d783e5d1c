"""The Ray Data actor pool gives exactly the scores of the in-process scorer, row for row."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysys.core.config import ScoreConfig
from raysys.data.sources import load_builtin_digits
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.ray.scoring import score_table
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
    keys = ["a" if i % 3 else "b" for i in range(n)]
    table = pa.table({
        "sample_id": [f"r{i}" for i in range(n)],
        "image": pa.array(src.images[:n], pa.binary()),
        "label": pa.array(src.labels[:n], pa.int32()),
        "score_mode": keys,
    })
    cfg = ScoreConfig(batch_size=64, min_actors=1, max_actors=2)
    scored = score_table(table, dirs, cfg)
    assert sorted(scored["sample_id"].to_pylist()) == sorted(table["sample_id"].to_pylist())
    order = np.argsort([int(s[1:]) for s in scored["sample_id"].to_pylist()])
    expected = DifficultyScorer(dirs)(src.images[:n], src.labels[:n], keys)
    for name in ("difficulty", "p_true", "loss", "entropy"):
        assert np.allclose(scored[name].to_numpy()[order], expected[name], atol=1e-5), name
    assert (scored["pred"].to_numpy()[order] == expected["pred"]).all()
    # the two models really differ, so a row scored by the wrong one would be caught
    both_a = DifficultyScorer(dirs)(src.images[:n], src.labels[:n], ["a"] * n)
    assert not np.allclose(both_a["p_true"], expected["p_true"], atol=1e-3)
