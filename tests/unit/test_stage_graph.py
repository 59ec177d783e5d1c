"""The stage graph without running anything: the order derived from what each stage reads, and
which stages a config change reruns (a stage reruns exactly when its digest changes)."""

import pytest

from raysys.core.loading import ConfigError
from raysys.core.stage import Stage, chain, check_chain
from raysys.stages import STAGES, load_config
from tests.conftest import TINY

COMPARE = ["compare.seeds=[0, 1]", "compare.variants={real_only: {schedule: real_only}, "
           "dts: {schedule: diverse_to_specific, plans: [discl]}}"]


def _digests(*overrides: str) -> dict[str, str]:
    """Stage (and curriculum run) -> digest, for every stage of the chain and the tune stage."""
    cfg = load_config(TINY, [*COMPARE, "tune.space={curriculum.loss: {choice: [ce, balanced_softmax]}}", *overrides])
    out = {}
    for stage in STAGES:
        if not stage.applies(cfg):
            continue
        for unit in stage.dirs(cfg):
            out[unit.name] = unit.digest
    return out


def _changed(*overrides: str) -> set[str]:
    base, other = _digests(), _digests(*overrides)
    assert base.keys() == other.keys()
    return {name for name in base if base[name] != other[name]}


def test_the_run_order_comes_from_what_stages_read():
    cfg = load_config(TINY)
    order = chain(STAGES, cfg)
    assert [s.name for s in order] == ["prepare", "train_classifier", "score", "pretrain_generator", "finetune",
                                       "control", "synthesize", "quality", "curriculum", "evaluate", "report"]
    for i, stage in enumerate(order):
        assert all(r in order[:i] for r in stage.upstream_stages() if r.applies(cfg))
    real_base = load_config(TINY, ["generator.base=some/hub-id", "data.pretrain_per_class=0"])
    assert "pretrain_generator" not in [s.name for s in chain(STAGES, real_base)]
    # Listed backwards, every stage still runs after what it reads.
    backwards = chain(list(reversed(STAGES)), cfg)
    assert backwards[0].name == "prepare" and backwards[-1].name == "report" and set(backwards) == set(order)
    for i, stage in enumerate(backwards):
        assert all(r in backwards[:i] for r in stage.upstream_stages() if r.applies(cfg))


def test_resource_and_concurrency_knobs_change_no_stage():
    assert _changed("score.max_actors=2", "synthesis.max_actors=1", "compare.concurrent=1",
                    "train.cpus_per_worker=2", "score.concurrent_folds=1", "score.batch_size=17",
                    "synthesis.batch_size=7", "synthesis.cpus_per_actor=2", "finetune.cpus_per_worker=1",
                    "finetune.checkpoint_every=7", "finetune.concurrent_variants=1", "pretrain.cpus=1", "pretrain.checkpoint_every=5",
                    "pretrain.max_failures=1", "train.checkpoint_every=3",
                    "tune.max_concurrent_trials=1", "train.max_failures=2", "quality.max_actors=2",
                    "quality.batch_size=17", "quality.cpus_per_actor=2") == set()


def test_a_sampling_knob_reruns_the_grid_synthesis_and_what_reads_them_never_a_model():
    changed = _changed("generator.guidance_scale=4")
    assert changed == {"control", "synthesize", "quality", "curriculum/dts-seed0", "curriculum/dts-seed1", "evaluate",
                       "report", "tune/sweep"}
    grid = _changed("control.grid_seeds=3")  # only the proof of control and the report that shows it
    assert grid == {"control", "report"}


def test_a_data_change_reruns_everything_and_a_curriculum_change_only_the_curricula():
    assert _changed("data.max_per_class=50") == set(_digests())
    assert _changed("curriculum.synthetic_per_epoch=0.25") == {
        "curriculum/real_only-seed0", "curriculum/real_only-seed1", "curriculum/dts-seed0", "curriculum/dts-seed1",
        "evaluate", "report", "tune/sweep"}
    retrain = {"finetune", "control", "synthesize", "quality", "curriculum/dts-seed0", "curriculum/dts-seed1",
               "evaluate", "report", "tune/sweep"}
    assert _changed("finetune.lr=0.01") == retrain
    assert _changed("finetune.difficulty_dropout=0.3") == retrain


def test_a_quality_setting_reruns_the_measures_and_what_shows_them_never_a_set_or_a_classifier():
    assert _changed("quality.extractor=test_resnet") == {"quality", "evaluate", "report"}
    assert _changed("quality.copy_threshold=0.3") == {"quality", "evaluate", "report"}


def test_a_version_bump_reruns_the_stage_and_everything_downstream():
    cfg = load_config(TINY)
    a = Stage(name="a", reads=(), config=("data",), run=lambda ctx: {})
    b = Stage(name="b", reads=(a,), config=(), run=lambda ctx: {})
    a2 = Stage(name="a", reads=(), config=("data",), run=lambda ctx: {}, version=2)
    b2 = Stage(name="b", reads=(a2,), config=(), run=lambda ctx: {})
    assert a.digest(cfg) != a2.digest(cfg) and b.digest(cfg) != b2.digest(cfg)


def test_every_stage_is_checked_before_any_work():
    cfg = load_config(TINY)
    broken = Stage(name="x", reads=(), config=(), run=lambda ctx: {}, check=lambda c: ["x is bad"])
    with pytest.raises(ConfigError, match=r"^here: x is bad$"):
        check_chain([*STAGES, broken], cfg, "here")


def test_plans_rerun_alone_and_a_base_plan_follows_the_base_model():
    from raysys.stages import synthesize

    base = ["data.pretrain_per_class=0", "synthesis.plans=[{name: b, model: base}]"]
    a = load_config(TINY, [*base, "generator.base=org/model-a"])
    b = load_config(TINY, [*base, "generator.base=org/model-b"])
    assert synthesize.stage_dir(a).digest != synthesize.stage_dir(b).digest
    assert synthesize.plan_digest(a, a.synthesis.plans[0]) != synthesize.plan_digest(b, b.synthesis.plans[0])
    cfg = load_config(TINY)
    more = load_config(TINY, ["synthesis.plans=[{name: difficulty, model: difficulty, kind: text, ratio: 0.2, "
                              "class_shares: inverse_frequency, difficulty: uniform, difficulty_params: [0.0, 1.0]}, "
                              "{name: extra, model: base}]"])
    assert synthesize.plan_digest(more, more.synthesis.plans[0]) == synthesize.plan_digest(cfg, cfg.synthesis.plans[0])
    lr = load_config(TINY, ["finetune.lr=0.01", "synthesis.plans=[{name: extra, model: base}]"])
    assert synthesize.plan_digest(lr, lr.synthesis.plans[0]) == synthesize.plan_digest(more, more.synthesis.plans[1])


def test_renaming_a_variant_reruns_evaluate_and_a_bad_variant_value_is_refused_before_any_work():
    renamed = ["compare.variants={ro: {schedule: real_only}, dts: {schedule: diverse_to_specific, plans: [discl]}}"]
    a = load_config(TINY, ["compare.variants={real_only: {schedule: real_only}, "
                           "dts: {schedule: diverse_to_specific, plans: [discl]}}"])
    b = load_config(TINY, renamed)
    from raysys.stages import evaluate

    assert evaluate.stage_dir(a).digest != evaluate.stage_dir(b).digest
    with pytest.raises(ConfigError, match=r"compare\.variants\.x: .*focal"):
        load_config(TINY, ["compare.variants={x: {loss: focal}}"])


def test_a_prompts_file_plan_digest_follows_the_file_content(tmp_path):
    """Editing a `prompts: file:` plan's file changes its prompts and sample ids, so it changes the
    plan's digest (and the stage's); rewriting the same content keeps them."""
    from raysys.stages import synthesize

    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("zero: [a round zero]\none: [a thin one]\n")
    cfg = load_config(TINY, [f"synthesis.plans=[{{name: f, model: plain, prompts: 'file:{prompts}'}}]"])

    def digests() -> tuple[str, str]:
        return synthesize.plan_digest(cfg, cfg.synthesis.plans[0]), synthesize.stage_dir(cfg).digest

    before = digests()
    prompts.write_text("zero: [a round zero]\none: [a thin one]\n")
    assert digests() == before
    prompts.write_text("zero: [a round zero]\none: [a thin one, a tall one]\n")
    edited = digests()
    assert edited[0] != before[0] and edited[1] != before[1]
    prompts.write_text("zero: [a round zero]\none: [a thin one]\n")
    assert digests() == before
    assert synthesize.plan_dir(cfg, "f") == f"{synthesize.plan_folder(cfg, 'f')}/{before[0]}"  # its version's folder


def test_captions_run_between_prepare_and_score_and_rerun_what_reads_them_never_the_classifier():
    on = ["captions.model=Salesforce/blip-image-captioning-base"]
    order = [s.name for s in chain(STAGES, load_config(TINY, on))]
    assert order[:4] == ["prepare", "caption", "train_classifier", "score"]
    base = _digests(*on)
    other = _digests(*on, "captions.max_new_tokens=12")
    changed = {name for name in base if base[name] != other[name]}
    assert changed == set(base) - {"prepare", "train_classifier", "pretrain_generator"}  # all that reads score
    assert {name for name in base if base[name] != _digests(*on, "captions.max_actors=4")[name]} == set()
    assert "caption" not in _digests() and _digests()["score"] != base["score"]  # off: score reads prepare's
