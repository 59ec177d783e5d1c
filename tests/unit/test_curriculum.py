"""Curriculum schedules: which synthetic level each schedule trains on at which epoch."""

import json

import numpy as np
import pytest

from raysys.schedules.adaptive import Adaptive, choose_level, inlier_mask, level_gains
from raysys.schedules.base import Level
from raysys.schedules.difficulty import bin_of
from raysys.schedules.registry import SCHEDULES, create_schedule

LAMBDAS = [0.9, 0.1, 0.5]  # any order in config; schedules sort them
BINS = [0.0, 1 / 3, 2 / 3, 1.0]


def picks(schedule, epochs):
    """Per epoch: the λ levels, s bins of its selection ('real' when real only)."""
    out = []
    for e in range(epochs):
        sel = schedule.selection(e)
        out.append("real" if sel.real_only else tuple((l.guidance, l.difficulty_bin) for l in sel.levels))
    return out


def test_diverse_to_specific_walks_lambda_up_then_real_only():
    s = create_schedule("diverse_to_specific", epochs=8, curriculum_epochs=6, guidance_levels=LAMBDAS)
    assert picks(s, 8) == [((0.1, None),)] * 2 + [((0.5, None),)] * 2 + [((0.9, None),)] * 2 + ["real"] * 2
    assert [s.stage(e) for e in range(8)] == [0, 0, 1, 1, 2, 2, None, None]


def test_specific_to_diverse_and_uneven_stages():
    s = create_schedule("specific_to_diverse", epochs=7, curriculum_epochs=7, guidance_levels=LAMBDAS)
    assert [p[0][0] for p in picks(s, 7)] == [0.9, 0.9, 0.9, 0.5, 0.5, 0.1, 0.1]


def test_random_order_is_a_seeded_permutation():
    a = create_schedule("random_order", epochs=5, curriculum_epochs=5, guidance_levels=[0.1, 0.3, 0.5, 0.7, 0.9], seed=4)
    b = create_schedule("random_order", epochs=5, curriculum_epochs=5, guidance_levels=[0.1, 0.3, 0.5, 0.7, 0.9], seed=4)
    assert a.order == b.order and sorted(a.order) == [0.1, 0.3, 0.5, 0.7, 0.9]
    others = {tuple(create_schedule("random_order", epochs=5, curriculum_epochs=5,
                                    guidance_levels=[0.1, 0.3, 0.5, 0.7, 0.9], seed=k).order) for k in range(6)}
    assert len(others) > 1


def test_text_only_real_only_and_all_levels():
    t = create_schedule("text_only", epochs=4, curriculum_epochs=3, guidance_levels=[0.0, 0.5])
    assert picks(t, 4) == [((0.0, None),)] * 3 + ["real"]
    with pytest.raises(ValueError, match="λ = 0"):
        create_schedule("text_only", epochs=4, curriculum_epochs=3, guidance_levels=[0.5])
    assert picks(create_schedule("real_only", epochs=3, curriculum_epochs=0), 3) == ["real"] * 3
    a = create_schedule("all_levels", epochs=4, curriculum_epochs=2, guidance_levels=LAMBDAS)
    assert picks(a, 4) == [((0.1, None), (0.5, None), (0.9, None))] * 2 + ["real"] * 2
    text = create_schedule("all_levels", epochs=2, curriculum_epochs=2)  # a pool without λ: any synthetic row
    assert picks(text, 2) == [((None, None),)] * 2


def test_difficulty_orders_walk_the_s_bins():
    assert bin_of(np.array([0.0, 0.2, 0.34, 0.7, 1.0]), BINS).tolist() == [0, 0, 1, 2, 2]
    up = create_schedule("easy_to_hard", epochs=4, curriculum_epochs=3, difficulty_bins=BINS)
    assert picks(up, 4) == [((None, 0),), ((None, 1),), ((None, 2),), "real"]
    down = create_schedule("hard_to_easy", epochs=3, curriculum_epochs=3, difficulty_bins=BINS)
    assert [p[0][1] for p in picks(down, 3)] == [2, 1, 0]


def test_two_axis_walks_lambda_and_s_together():
    s = create_schedule("two_axis", epochs=4, curriculum_epochs=3, guidance_levels=LAMBDAS, difficulty_bins=[0, 0.5, 1])
    assert picks(s, 4) == [((0.1, 0),), ((0.5, 0),), ((0.9, 1),), "real"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown curriculum schedule"):
        create_schedule("zigzag", epochs=3, curriculum_epochs=3)
    with pytest.raises(ValueError, match="curriculum_epochs >= 3"):
        create_schedule("diverse_to_specific", epochs=5, curriculum_epochs=2, guidance_levels=LAMBDAS)
    assert len(SCHEDULES) == 10


def test_adaptive_picks_the_largest_gain_and_ignores_an_outlier():
    rng = np.random.default_rng(0)
    before = {lam: rng.uniform(0.2, 0.4, 40) for lam in (0.1, 0.5, 0.9)}
    after = {lam: before[lam] + gain + rng.normal(0, 0.003, 40) for lam, gain in ((0.1, 0.02), (0.5, 0.06), (0.9, 0.01))}
    after[0.9][7] += 5.0  # one wild image: its raw mean gain (about 0.135) would beat λ=0.5's 0.06
    assert (after[0.9] - before[0.9]).mean() > 0.1
    mask = inlier_mask(after[0.9] - before[0.9])
    assert not mask[7] and mask.sum() >= 38
    gains = level_gains(before, after)
    assert gains == pytest.approx({0.1: 0.02, 0.5: 0.06, 0.9: 0.01}, abs=0.002)
    assert choose_level(gains) == 0.5
    assert choose_level({0.1: 0.3, 0.5: 0.3}) == 0.1  # ties: the lower λ


def test_adaptive_stages_and_resume_make_the_same_choices():
    rng = np.random.default_rng(1)

    def measurements(stage):
        # A different winner per stage: λ levels[stage % 3] gains most.
        levels = [0.1, 0.5, 0.9]
        before = {lam: rng.uniform(0, 0.5, 20) for lam in levels}
        after = {lam: before[lam] + (0.1 if lam == levels[stage % 3] else 0.01) for lam in levels}
        return before, after

    data = [measurements(k) for k in range(3)]
    full = Adaptive(LAMBDAS, epochs=8, curriculum_epochs=6, stage_epochs=2)
    with pytest.raises(RuntimeError, match="not chosen"):
        full.selection(0)
    for epoch in range(8):
        if full.needs_choice(epoch):
            full.record(epoch, *data[full.stage(epoch)])
    assert [p if p == "real" else p[0][0] for p in picks(full, 8)] == [0.1, 0.1, 0.5, 0.5, 0.9, 0.9, "real", "real"]

    # Killed after stage 1 chose: the checkpointed state restores stages 0-1, stage 2 chooses as before.
    first = Adaptive(LAMBDAS, epochs=8, curriculum_epochs=6, stage_epochs=2)
    for epoch in range(4):
        if first.needs_choice(epoch):
            first.record(epoch, *data[first.stage(epoch)])
    resumed = Adaptive(LAMBDAS, epochs=8, curriculum_epochs=6, stage_epochs=2)
    resumed.load_state(json.loads(json.dumps(first.state())))  # through JSON, as in a checkpoint
    assert [resumed.needs_choice(e) for e in range(8)] == [False] * 4 + [True, True, False, False]
    resumed.record(4, *data[2])
    assert picks(resumed, 8) == picks(full, 8)
    assert resumed.state() == json.loads(json.dumps(full.state()))
    assert Level(guidance=0.5) in resumed.selection(2).levels
