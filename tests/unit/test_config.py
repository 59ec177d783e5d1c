import pytest

from raysys.core.config import RaysysConfig
from raysys.core.loading import ConfigError, read_config
from raysys.core.stage import run_stage
from raysys.stages import BY_COMMAND, load_config
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


def test_an_override_sets_a_list_item_by_index_and_a_bad_one_is_named_in_one_line():
    cfg = load_config(TINY, ["synthesis.plans.0.ratio=0.3", "synthesis.plans[1].seeds_per_source=3",
                             "compare.seeds=[0, 1]", "compare.seeds.1=5"])
    assert cfg.synthesis.plans[0].ratio == 0.3 and cfg.synthesis.plans[1].seeds_per_source == 3
    assert cfg.compare.seeds == [0, 5]
    n = len(cfg.synthesis.plans)
    with pytest.raises(ConfigError, match=rf"^command line: 'synthesis\.plans\.{n}\.ratio': synthesis\.plans has "
                                          rf"{n} items \(indices 0 to {n - 1}\)"):
        load_config(TINY, [f"synthesis.plans.{n}.ratio=0.3"])
    with pytest.raises(ConfigError, match=r"synthesis\.plans is a list; set an item by its index, e\.g\. "
                                          r"'synthesis\.plans\.0\.<field>=\.\.\.'"):
        load_config(TINY, ["synthesis.plans.difficulty.ratio=0.3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'synthesis\.plans\[1\]\.ratoi'\. "
                                          r"Did you mean 'synthesis\.plans\[1\]\.ratio'"):
        load_config(TINY, ["synthesis.plans.1.ratoi=0.3"])
    with pytest.raises(ConfigError, match=r"synthesis\.plans\[0\] \(difficulty\): ratio must be >= 0"):  # the value's own check
        load_config(TINY, ["synthesis.plans.0.ratio=-1"])


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


BAD_INPUTS = [
    # (override, the key the message names, what it says would work, the stage commands that refuse it on their own)
    ("tune.space={curriculum.stage_epochs: {uniform: [1, 4]}}", "tune.space.curriculum.stage_epochs", "randint",
     ["tune"]),
    ("tune.space={curriculum.epochs: {loguniform: [4, 16]}}", "tune.space.curriculum.epochs", "randint", ["tune"]),
    ("classifier.weights=s3://bucket/w.safetensors", "classifier.weights", "local file",
     ["train-classifier", "score", "curriculum", "tune"]),
    ("classifier.name=resnt18", "classifier.name", "timm", ["train-classifier", "score", "curriculum", "tune"]),
    ("generator.prompt_template='a photo of {name} in {place}'", "generator.prompt_template", "only {name}",
     ["pretrain-generator", "finetune", "control", "synthesize"]),
    ("generator.prompt_template='a photo of {}'", "generator.prompt_template", "only {name}",
     ["pretrain-generator", "finetune", "control", "synthesize"]),
    ("synthesis.plans=[{name: discl, model: plain, kind: discl, guidance_levels: [0.3, 0.7, 0.3]}]",
     "guidance_levels", "each λ once", ["synthesize"]),
    ("pretrain.condition_dropout=1.5", "pretrain.condition_dropout", "[0, 1)", ["pretrain-generator"]),
    ("finetune.condition_dropout=1.5", "finetune.condition_dropout", "[0, 1)", ["finetune"]),
    ("generator.guidance_scale=-5", "generator.guidance_scale", ">= 0", ["control", "synthesize"]),
    ("finetune.lora_alpha=-3", "finetune.lora_alpha", "> 0", ["finetune"]),
    ("synthesis.filter.clip_text_threshold=5", "synthesis.filter.clip_text_threshold", "[-1, 1]", ["synthesize"]),
]


@pytest.mark.parametrize("override,key,advice,commands", BAD_INPUTS, ids=[b[0].split("=")[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_before_any_work(override, key, advice, commands, tmp_path):
    """Loading the config refuses it with one line naming the key; so does each stage that uses the
    key, run on its own, before it writes anything."""
    root = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [f"run.root={root}", override])
    msg = str(err.value)
    assert msg.startswith("command line: ") and key in msg and advice in msg and "\n" not in msg
    cfg = read_config(TINY, [f"run.root={root}", override])  # types only: the checks are the stages'
    for command in commands:
        with pytest.raises(ConfigError) as err:
            run_stage(BY_COMMAND[command], cfg)
        assert str(err.value).startswith(f"{command}: ") and key in str(err.value)
    assert not root.exists()


def test_a_prompt_template_is_filled_with_the_class_name_and_caption_alone():
    from raysys.generation.prompts import check_prompt_template

    assert check_prompt_template("a photo of {name}") == []
    assert check_prompt_template("{{literal}} {name!r:>10}") == []
    for template, shown in [("{name} at {time}", "{time}"), ("{name:{width}}", "{width}"), ("{0} {name}", "{0}"),
                            ("{name.upper}", "{name.upper}")]:
        (problem,) = check_prompt_template(template)
        assert f"placeholder(s) {shown}: only {{name}}" in problem
    (problem,) = check_prompt_template("a photo of {name")
    assert "is not a format string" in problem and "{{" in problem
    assert check_prompt_template("a photo") == ["generator.prompt_template must contain {name} (the class name), "
                                                "got 'a photo'"]


def _without_runtime(obj, plain):
    """OmegaConf's container of a config section less the fields declared `runtime`."""
    import dataclasses

    from raysys.core.config import RUNTIME

    if dataclasses.is_dataclass(obj):
        return {f.name: _without_runtime(getattr(obj, f.name), plain[f.name])
                for f in dataclasses.fields(obj) if not f.metadata.get(RUNTIME)}
    if isinstance(obj, list):
        return [_without_runtime(v, p) for v, p in zip(obj, plain)]
    return plain


@pytest.mark.parametrize("config", sorted(p.name for p in TINY.parent.glob("*.yaml")))
def test_digests_see_configs_as_omegaconf_does(config):
    """A digest's plain form of a config is OmegaConf's less its runtime fields, without its cost: every shipped config,
    and compare variants that put ints in float fields (which OmegaConf reads as floats, so
    `synthetic_per_epoch: 1` and `1.0` are one run)."""
    import dataclasses
    import json

    from omegaconf import OmegaConf

    from raysys.core.loading import _plain
    from raysys.core.comparison import variant_config

    cfg = load_config(TINY.parent / config)
    runs = [cfg]
    if config == TINY.name:
        cfg = load_config(TINY, ["compare.variants={a: {schedule: real_only, synthetic_per_epoch: 1, "
                                 "guidance_levels: [1, 0.5], undersample: 1}}"])
        runs.append(variant_config(cfg, "a", 0))
        assert runs[-1].curriculum.synthetic_per_epoch == 1 and type(runs[-1].curriculum.synthetic_per_epoch) is int
    for c in runs:
        for section in dataclasses.fields(c):
            value = getattr(c, section.name)
            want = _without_runtime(value, OmegaConf.to_container(OmegaConf.structured(value)))
            assert json.dumps(_plain(value), sort_keys=True) == json.dumps(want, sort_keys=True), section.name
    if len(runs) > 1:  # 1 == 1.0 in Python, not in a digest's JSON
        assert json.dumps(_plain(runs[-1].curriculum)["guidance_levels"]) == "[1.0, 0.5]"
