"""`raysys tune` without Ray: the tune section's validation, how sampled values become a
curriculum config, the search space, the derived concurrency, and the results tables."""

import csv
import io

import pytest

from raysys.core.loading import ConfigError
from raysys.stages import load_config
from raysys.schedules.search import apply_tune_params
from raysys.stages.tune import best_config, rank_trials, results_tables
from tests.conftest import TINY


def _load(*overrides):
    return load_config(TINY, list(overrides))


@pytest.mark.parametrize("override, message", [
    ("tune.space={curriculum.schedul: {choice: [all_levels]}}", "did you mean 'curriculum.schedule'"),
    ("tune.space={train.lr: {uniform: [0.001, 0.01]}}", "never regenerate"),
    ("tune.space={curriculum.schedule: {choice: [nope]}}", "value 'nope': curriculum.schedule must be one of"),
    ("tune.space={curriculum.synthetic_per_epoch: {uniform: [0.5, 0.1]}}", "uniform needs lo < hi"),
    ("tune.space={curriculum.synthetic_per_epoch: {choice: [abc]}}", "value 'abc'"),
    ("tune.space={curriculum.undersample: {uniform: [0.5, 1.5]}}", "undersample in (0, 1]"),
    ("tune.space={curriculum.difficulty_params.5: {choice: [0.5]}}", "has no item 5"),
    ("tune.space={curriculum.epochs: {range: [1, 2]}}", "must be one of {choice"),
    ("tune.space={curriculum.equal_steps: {uniform: [0, 1]}}", "uniform draws floats, but the field takes no floats"),
    ("tune.metric=acc", "bad value for 'tune.metric': Invalid value 'acc', expected one of ['val_acc'"),
    ("tune.reduction_factor=1", "reduction_factor >= 2"),
    ("curriculum.difficulty_distribution=gamma", "expected one of ['normal', 'beta', 'uniform']"),
    ("curriculum.difficulty_distribution=normal", None),
    ("curriculum.measured_difficulty=[0.8, 0.2]", "measured_difficulty must be [lo, hi]"),
])
def test_tune_and_new_curriculum_fields_are_validated(override, message):
    if message is None:
        assert _load(override).curriculum.difficulty_distribution == "normal"
        return
    with pytest.raises(ConfigError) as err:
        _load(override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_float_domains_are_kept_for_float_fields():
    """uniform and loguniform draw floats: refused on an integer field (test_config), taken on a float one."""
    cfg = _load("tune.space={curriculum.difficulty_bins.1: {uniform: [0.2, 0.5]}, "
                "curriculum.synthetic_per_epoch: {loguniform: [0.1, 1.0]}, curriculum.stage_epochs: {randint: [1, 4]}}")
    assert cfg.tune.space["curriculum.difficulty_bins.1"] == {"uniform": [0.2, 0.5]}
    assert cfg.tune.space["curriculum.stage_epochs"] == {"randint": [1, 4]}


def test_sampled_values_set_fields_and_list_items():
    cfg = _load("curriculum.difficulty_params=[0.5, 0.1]")
    trial = apply_tune_params(cfg, {"curriculum.schedule": "all_levels", "curriculum.difficulty_params.0": 0.7,
                                    "curriculum.guidance_levels": [0.5, 0.9]}, name="trial-x")
    c = trial.curriculum
    assert c.schedule == "all_levels" and c.difficulty_params == [0.7, 0.1] and c.guidance_levels == [0.5, 0.9]
    assert c.name == "trial-x" and cfg.curriculum.difficulty_params == [0.5, 0.1]  # the base is not changed


def test_search_space_and_derived_concurrency():
    tune = pytest.importorskip("ray.tune")
    from raysys.ray.tune import derive_concurrency, search_space

    space = search_space({"curriculum.schedule": {"choice": ["a", "b"]}, "curriculum.loss": {"grid": ["ce"]},
                          "curriculum.undersample": {"uniform": [0.3, 1.0]},
                          "curriculum.curriculum_epochs": {"randint": [12, 24]}})
    assert space["curriculum.loss"] == {"grid_search": ["ce"]}
    assert isinstance(space["curriculum.schedule"], tune.search.sample.Categorical)
    assert (space["curriculum.undersample"].lower, space["curriculum.undersample"].upper) == (0.3, 1.0)
    assert (space["curriculum.curriculum_epochs"].lower, space["curriculum.curriculum_epochs"].upper) == (12, 24)
    assert derive_concurrency({"CPU": 2.0}, workers=1, cpus_per_worker=1, use_gpu=False) == 2
    assert derive_concurrency({"CPU": 16.0}, workers=2, cpus_per_worker=3, use_gpu=False) == 2
    assert derive_concurrency({"CPU": 64.0, "GPU": 8.0}, workers=4, cpus_per_worker=1, use_gpu=True) == 2
    assert derive_concurrency({"CPU": 1.0}, workers=2, cpus_per_worker=1, use_gpu=False) == 1  # at least one


def _row(tid, status, epochs, value, undersample):
    return {"trial_id": tid, "status": status, "epochs": epochs, "error": "boom" if status == "error" else None,
            "params": {"curriculum.undersample": undersample},
            "metrics": {} if value is None else {"val_acc_few": value, "val_acc": value / 2,
                                                   **({"test_acc": 0.5} if status == "completed" else {})}}


def test_ranking_tables_and_best_config():
    rows = [_row("a", "stopped", 6, 0.9, 0.3), _row("b", "completed", 24, 0.6, 0.5), _row("c", "error", 0, None, 0.7),
            _row("d", "completed", 24, 0.8, 1.0)]
    ranked = rank_trials(rows, "val_acc_few", "max")
    assert [r["trial_id"] for r in ranked] == ["d", "b", "a", "c"]  # completed first, best first within
    assert [r["trial_id"] for r in rank_trials(rows, "val_acc_few", "min")] == ["b", "d", "a", "c"]
    csv_text, md = results_tables(ranked, ["curriculum.undersample"])
    table = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["trial_id"] for r in table] == ["d", "b", "a", "c"]
    assert table[0]["undersample"] == "1.0000" and table[0]["val_acc_few"] == "0.8000" and table[0]["test_acc"] == "0.5000"
    assert table[2]["test_acc"] == "" and table[3]["error"] == "boom"
    assert md.splitlines()[0].startswith("| trial_id | status | epochs | undersample |") and len(md.splitlines()) == 6
    cfg = _load("compare.variants={a: {schedule: real_only}}", "tune.name=sw")
    best = best_config(cfg, ranked[0])
    assert best.curriculum.undersample == 1.0 and best.curriculum.name == "tuned-sw" and best.compare.variants == {}


def test_tune_without_a_space_or_without_synthetic_images_stops_before_any_work(tmp_path):
    from raysys.core.stage import MissingInput
    from raysys.stages import tune as tune_stage

    with pytest.raises(ConfigError, match="tune.space is empty"):
        tune_stage.run(_load(f"run.root={tmp_path}"))
    cfg = _load(f"run.root={tmp_path}", "tune.space={curriculum.loss: {choice: [ce, balanced_softmax]}}")
    with pytest.raises(MissingInput, match="tune needs the output of prepare: run `raysys prepare CONFIG`"):
        tune_stage.run(cfg)
    assert not (tmp_path / "tune").exists()  # nothing was started
