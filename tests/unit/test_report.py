"""The comparison's arithmetic (mean/std over seeds, paired differences, verdicts), the report's
rendering, and the `compare` config section's validation."""

import math
import re

import pytest

from raysys.report import page, statistics
from raysys.core.loading import ConfigError
from raysys.stages import load_config
from raysys.core.comparison import curriculum_configs, variant_config
from raysys.stages import evaluate
from tests.conftest import TINY


def test_mean_std_is_the_sample_std_and_ignores_missing_values():
    assert statistics.mean_std([0.5, 0.7, None]) == pytest.approx((0.6, math.sqrt(0.02)))
    assert statistics.mean_std([0.4]) == (0.4, None)
    assert statistics.mean_std([None]) == (None, None)


def test_compare_pairs_seeds_and_only_beats_when_both_accuracies_rise():
    base = {"acc": [0.80, 0.82, 0.81], "acc_few": [0.50, 0.60, 0.55]}
    better = {"acc": [0.81, 0.83, 0.80], "acc_few": [0.60, 0.62, 0.65]}
    out = statistics.compare(base, better)
    assert out["acc"]["mean_diff"] == pytest.approx(0.0033333, abs=1e-6)
    assert out["acc_few"]["mean_diff"] == pytest.approx(0.0733333, abs=1e-6)
    assert out["acc"]["seeds_won"] == 2 and out["acc_few"]["seeds_won"] == 3
    assert out["verdict"] == "beats"
    worse_overall = {"acc": [0.79, 0.80, 0.80], "acc_few": [0.60, 0.62, 0.65]}
    assert statistics.compare(base, worse_overall)["verdict"] == "does not beat"


def test_equal_image_counts_are_ties_however_the_floats_round():
    # 189 of 200 and 378 of 400 right are the same accuracy, but not the same float
    base = {"acc": [189 / 200, 0.5, 0.5], "acc_few": [0.945, 0.5, 0.5]}
    same = {"acc": [0.945, 0.5, 0.5], "acc_few": [0.9450000000000001, 0.5, 0.5]}
    assert 189 / 200 != 0.9450000000000001
    out = statistics.compare(base, same)
    assert out["acc_few"]["seeds_won"] == 0 and out["acc"]["seeds_won"] == 0
    assert out["verdict"] == "does not beat"
    one_more = {"acc": [190 / 200, 0.5, 0.5], "acc_few": [0.95, 0.5, 0.5]}
    assert statistics.compare(base, one_more)["acc_few"]["seeds_won"] == 1


def test_verdicts_say_plainly_when_a_variant_does_not_beat_the_baseline():
    ev = {"baseline": "real_only", "comparisons": {
        "dts": {"acc": {"mean_diff": 0.01, "seeds_won": 2, "seeds": 3},
                "acc_few": {"mean_diff": -0.02, "seeds_won": 1, "seeds": 3}, "verdict": "does not beat"}}}
    (line,) = page.verdicts(ev)
    assert line == ("dts does NOT beat real_only: +1.0 points overall and -2.0 points on the few classes "
                    "(won 1 of 3 seeds on few).")


def _row(schedule, loss, acc, few, val, extra=()):
    return {"schedule": schedule, "loss": loss, "extra_real_splits": list(extra), "val_acc": sum(val) / len(val),
            "per_seed": {"acc": acc, "acc_few": few, "val_acc": val}}


def test_headroom_recovery_is_measured_against_the_best_real_only_on_validation():
    table = {
        "ce": _row("real_only", "ce", [0.80, 0.82, 0.81], [0.40, 0.50, 0.45], [0.85, 0.86, 0.85]),
        "bs": _row("real_only", "balanced_softmax", [0.90, 0.91, 0.90], [0.80, 0.84, 0.82], [0.92, 0.93, 0.92]),
        "dts": _row("diverse_to_specific", "balanced_softmax", [0.92, 0.90, 0.95], [0.86, 0.84, 0.81],
                    [0.95, 0.95, 0.95]),
        "reference": _row("real_only", "balanced_softmax", [0.94, 0.95, 0.90], [0.90, 0.94, 0.92],
                          [0.99, 0.99, 0.99], extra=["pretrain"]),
    }
    h = statistics.headroom(table, "reference", None)
    # bs wins on validation; the reference (higher validation, but trained on more) is never a candidate
    assert h["best_real_only"] == "bs"
    assert h["headroom"]["acc_few"]["per_seed"] == pytest.approx([0.10, 0.10, 0.10])
    few = h["recovery"]["dts"]["acc_few"]
    assert few["per_seed"] == pytest.approx([0.6, 0.0, -0.1])
    assert few["seeds_at_half"] == 1 and few["seeds"] == 3 and few["mean"] == pytest.approx(0.5 / 3)
    overall = h["recovery"]["dts"]["acc"]  # seed 2 has no headroom (the reference is not better): no figure
    assert overall["per_seed"] == pytest.approx([0.5, -0.25, None]) and overall["seeds"] == 2
    assert h["recovery"]["bs"]["acc_few"]["per_seed"] == [0.0, 0.0, 0.0] and "reference" not in h["recovery"]
    assert statistics.headroom(table, None, "the generator's training images are not known") == {
        "unavailable": "the generator's training images are not known"}
    # accuracies on 150 images: (0.92 - 0.88) / (0.96 - 0.88) is 0.49999... in floats, and counts as 50%
    exact_half = {**table, "dts": _row("diverse_to_specific", "balanced_softmax", [0.9] * 3, [0.92] * 3, [0.9] * 3),
                  "bs": _row("real_only", "balanced_softmax", [0.9] * 3, [0.88] * 3, [0.95] * 3),
                  "reference": _row("real_only", "balanced_softmax", [0.9] * 3, [0.96] * 3, [0.9] * 3, extra=["pretrain"])}
    assert statistics.headroom(exact_half, "reference", None)["recovery"]["dts"]["acc_few"]["seeds_at_half"] == 3
    no_real_only = {k: v for k, v in table.items() if k in ("dts", "reference")}
    assert "no real-only variant" in statistics.headroom(no_real_only, "reference", None)["unavailable"]


def test_the_reference_is_added_only_when_the_generators_training_images_are_known():
    from raysys.core.comparison import compare_variants

    cfg = load_config(TINY, [VARIANTS, "compare.reference=true"])
    assert compare_variants(cfg)["reference"] == {"schedule": "real_only", "loss": "balanced_softmax",
                                                  "extra_real_splits": ["pretrain"]}
    assert evaluate.why_no_reference(cfg) is None
    assert [c.curriculum.name for c in curriculum_configs(cfg)][-1] == "reference-seed0"
    downloaded = load_config(TINY, [VARIANTS, "compare.reference=true", "generator.base=runwayml/stable-diffusion-v1-5"])
    assert "reference" not in compare_variants(downloaded)
    assert "not known" in evaluate.why_no_reference(downloaded)
    blocks = page.headroom_blocks(statistics.headroom({}, None, evaluate.why_no_reference(downloaded)))
    assert blocks[0][1].startswith("Headroom recovery cannot be computed: the generator's training images are not known")
    assert "reference" not in compare_variants(load_config(TINY, [VARIANTS]))  # tiny.yaml turns it off


def test_trace_is_run_length_encoded():
    assert page.trace(["λ=0.9", "λ=0.9", "λ=0.5", "real only"]) == "λ=0.9 ×2 → λ=0.5 ×1 → real only ×1"


def test_adaptive_choice_changes_count_boundaries_in_stage_order():
    # stage keys are strings, and "10" sorts before "2" as text: the order must be numeric
    chosen = {str(k): lam for k, lam in enumerate([0.1, 0.1, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1])}
    assert statistics.choice_changes(chosen) == (3, 10)
    assert statistics.choice_changes({"0": 0.3}) == (0, 0) and statistics.choice_changes({}) == (0, 0)


def test_html_escapes_and_markdown_tables_have_one_column_per_header():
    sections = [("A <b>", [("p", "x < y"), ("table", ["h1", "h2"], [["a|b", "c"]]), ("img", "f.png", "cap")])]
    html = page.to_html("t", sections)
    assert "A &lt;b&gt;" in html and "x &lt; y" in html and "<img src='f.png'" in html
    md = page.to_markdown("t", sections).splitlines()
    assert "| h1 | h2 |" in md and "|---|---|" in md and "| a/b | c |" in md and "![cap](f.png)" in md


VARIANTS = "compare.variants={ro: {schedule: real_only}, bs: {schedule: real_only, loss: balanced_softmax}}"


def test_variant_config_sets_the_variant_fields_seed_and_name():
    cfg = load_config(TINY, [VARIANTS, "compare.seeds=[3, 4]", "curriculum.epochs=7"])
    v = variant_config(cfg, "bs", 4)
    assert (v.curriculum.name, v.curriculum.seed, v.curriculum.loss, v.curriculum.epochs) == ("bs-seed4", 4,
                                                                                             "balanced_softmax", 7)
    assert cfg.curriculum.loss == "ce"  # the run's own section is untouched
    assert [c.curriculum.name for c in curriculum_configs(cfg)] == ["ro-seed3", "ro-seed4", "bs-seed3",
                                                                           "bs-seed4"]
    assert evaluate.baseline_name(cfg) == "ro"


@pytest.mark.parametrize("override, message", [
    ("compare.variants={ro: {schedul: real_only}}", "'schedul' is not a curriculum field (did you mean 'schedule'?)"),
    ("compare.variants={ro: {schedule: sideways}}", "compare.variants.ro: curriculum.schedule must be one of"),
    ("compare.baseline=nope", "compare.baseline 'nope' is not one of compare.variants"),
    ("compare.variants={ro: {schedule: real_only, extra_real_splits: [test]}}", "extra_real_splits ['test']: train,"),
    ("compare.variants={ro: {schedule: real_only, synthetic_loss_weight: -1}}", "synthetic_loss_weight must be >= 0"),
    ("compare.seeds=[1, 1]", "compare.seeds must be a non-empty list of distinct seeds"),
    # text rows carry no λ: a λ schedule, or all_levels beside an image-guided plan, would never draw them
    ("compare.variants={d: {schedule: diverse_to_specific, plans: [discl, plain]}}", "curriculum.plans ['plain']: text"),
    ("compare.variants={a: {schedule: all_levels, plans: [discl, difficulty]}}", "curriculum.plans ['difficulty']: tex"),
    ("compare.variants={ro: {seed: 3}}", "'seed' is not a curriculum field"),
])
def test_bad_compare_sections_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TINY, [override])


@pytest.mark.parametrize("stage, needs", [("report", "report needs the output of evaluate: run `raysys evaluate"),
                                          ("evaluate", "evaluate needs the output of curriculum: run `raysys curriculum")])
def test_a_stage_without_its_inputs_is_one_line_and_status_2(stage, needs, tmp_path, capsys):
    from raysys.cli import main

    assert main([stage, str(TINY), f"run.root={tmp_path}", VARIANTS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"raysys: error: {needs}")


def test_evaluate_is_done_only_after_results_csv_is_written(tiny_cfg, monkeypatch):
    """A kill while evaluate writes results.csv leaves it not done, so a rerun writes the CSV: its
    files come before its completion marker. Upstream runs are faked as finished."""
    from raysys.core import io
    from raysys.stages import curriculum, train_classifier

    cfg = tiny_cfg(VARIANTS, "compare.seeds=[0, 1]")
    done = [(train_classifier.stage_dir(cfg), {"acc": 0.5})]
    for i, unit in enumerate(curriculum_configs(cfg)):
        done.append((curriculum.stage_dir(unit), {"acc": 0.5 + i / 10, "acc_few": 0.2 + i / 10, "trace": ["real only"]}))
    for stage, metrics in done:
        io.write_json(stage.file("metrics.json"), {"status": "done", "config_digest": stage.digest, **metrics})

    write_text = io.write_text

    def killed_at_the_csv(location, text):
        if location.endswith("results.csv"):
            raise OSError("injected: killed while writing results.csv")
        write_text(location, text)

    monkeypatch.setattr(io, "write_text", killed_at_the_csv)
    with pytest.raises(OSError, match="injected"):
        evaluate.run(cfg)
    assert not evaluate.stage_dir(cfg).is_complete()
    monkeypatch.undo()

    metrics = evaluate.run(cfg)
    assert evaluate.stage_dir(cfg).is_complete() and list(metrics["variants"]) == ["ro", "bs"]
    rows = io.read_text(evaluate.stage_dir(cfg).file("results.csv")).splitlines()
    assert [row.split(",")[0] for row in rows] == ["variant", "ro", "bs"]
