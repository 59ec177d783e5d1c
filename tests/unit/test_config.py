import pytest

from raysys.core.config import ConfigError, RaysysConfig, digest, load_config, to_yaml
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
    with pytest.raises(ConfigError, match="score.mode"):
        load_config(TINY, ["score.mode=sometimes"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_yaml_round_trips_and_digest_tracks_changes(tmp_path):
    cfg = load_config(TINY)
    out = tmp_path / "resolved.yaml"
    out.write_text(to_yaml(cfg))
    again = load_config(out)
    assert again == cfg
    assert digest(cfg.train) == digest(again.train)
    assert digest(cfg.train) != digest(load_config(TINY, ["train.lr=0.1"]).train)
