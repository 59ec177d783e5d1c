import pytest

from raysys.core.config import RaysysConfig
from raysys.core.loading import ConfigError
from raysys.stages import load_config
from raysys.core.loading import digest, to_yaml
from tests.conftest import TINY


def test_yaml_and_overrides_merge_over_defaults():
    cfg = load_config(TINY, ["train.epochs=7", "score.folds=4"])
    assert isinstance(cfg, RaysysConfig)
    assert cfg.train.epochs == 7 and cfg.score.folds == 4
    assert cfg.data.source == "builtin:digits"  # from the file
    assert cfg.train.weight_decay == RaysysConfig().train.weight_decay  # default kept


def test_unknown_key_in_file_names_key_path_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  imbalanse_ratio: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "data.imbalanse_ratio" in msg
    assert "data.imbalance_ratio" in msg  # the suggestion


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'train\.epoch'"):
        load_config(TINY, ["train.epoch=3"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(TINY, ["train.epochs=many"])


def test_invalid_value_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: .*score\.mode"):
        load_config(TINY, ["score.mode=sometimes"])
    for override in ("train.checkpoint_every=0", "data.val_per_class=0", "train.batch_size=0", "score.splits=[]"):
        with pytest.raises(ConfigError, match="command line"):
            load_config(TINY, [override])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: .*train\.epochs"):
        load_config(bad)
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_relative_weights_path_becomes_absolute_and_missing_file_fails_early(tmp_path, monkeypatch):
    (tmp_path / "w.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TINY, ["classifier.weights=w.pth"])
    assert cfg.classifier.weights == str(tmp_path / "w.pth")
    with pytest.raises(ConfigError, match="classifier.weights: no such file"):
        load_config(TINY, ["classifier.weights=missing.pth"])


def test_resolved_yaml_round_trips_and_digest_tracks_changes(tmp_path):
    cfg = load_config(TINY)
    out = tmp_path / "resolved.yaml"
    out.write_text(to_yaml(cfg))
    again = load_config(out)
    assert again == cfg
    assert digest(cfg.train) == digest(again.train)
    assert digest(cfg.train) != digest(load_config(TINY, ["train.lr=0.1"]).train)
