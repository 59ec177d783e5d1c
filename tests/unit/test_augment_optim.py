"""Training augmentations (raysys.data.augment) and optimizers / LR schedules
(raysys.training.optim): per-row determinism, what each augmentation does to pixels, mixup /
cutmix targets, the exact LR curves, and the recipe checks naming their `train.` field.

Plain numpy / torch, no Ray: the whole file runs in a few seconds on a CPU.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysys.data.augment import AUGMENTATIONS, augment_batch, mix_batch, soft_cross_entropy
from raysys.training.optim import check_recipe, make_optimizer


def _images(n: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0, low: int = 0) -> np.ndarray:
    """Random uint8 images (N, C, H, W) with values in [low, 255]."""
    return np.random.default_rng(seed).integers(low, 256, (n, c, h, w), dtype=np.uint8)


def _changed(out: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per row: does the output differ from the input anywhere?"""
    return (out != images).any(axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# augment_batch: determinism


@pytest.mark.parametrize("names", [[name] for name in AUGMENTATIONS] + [list(AUGMENTATIONS)])
def test_same_seeds_same_output_whatever_else_is_in_the_batch(names):
    images = _images(6)
    seeds = np.array([11, 22, 33, 44, 55, 66], dtype=np.int64)
    before = images.copy()

    out = augment_batch(images, names, seeds)
    again = augment_batch(images, names, seeds)
    alone = augment_batch(images[3:4], names, seeds[3:4])
    among_others = augment_batch(np.concatenate([_images(2, seed=9), images[3:4]]), names,
                                 np.array([7, 8, 44], dtype=np.int64))

    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(alone[0], out[3])
    np.testing.assert_array_equal(among_others[2], out[3])
    np.testing.assert_array_equal(images, before)  # the input is not modified


def test_augment_batch_leaves_global_rngs_alone():
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    augment_batch(_images(4), list(AUGMENTATIONS), np.arange(4, dtype=np.int64))
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_unknown_name_raises_naming_it_and_the_valid_ones():
    with pytest.raises(ValueError, match="blur") as err:
        augment_batch(_images(2), ["shift", "blur"], np.arange(2, dtype=np.int64))
    for name in AUGMENTATIONS:
        assert name in str(err.value)


# ---------------------------------------------------------------------------------------------
# shift


def test_shift_moves_content_at_most_two_pixels_and_zero_fills():
    n, h, w = 300, 12, 12
    seeds = np.arange(n, dtype=np.int64)
    marker = np.zeros((n, 1, h, w), dtype=np.uint8)
    marker[:, :, 6, 6] = 255
    content = _images(n, c=1, h=h, w=w, low=1)  # no zeros, so zero = filled

    moved_marker = augment_batch(marker, ["shift"], seeds)
    moved = augment_batch(content, ["shift"], seeds)  # same seeds: same shift as the marker

    offsets = set()
    for i in range(n):
        (ys, xs) = np.nonzero(moved_marker[i, 0])
        assert len(ys) == 1, "the single bright pixel survives a shift of <= 2 px"
        dy, dx = int(ys[0]) - 6, int(xs[0]) - 6
        assert abs(dy) <= 2 and abs(dx) <= 2
        offsets.add((dy, dx))

        expected = np.zeros((h + 4, w + 4), dtype=np.uint8)  # zero pad 2, then take the window
        expected[2 + dy:2 + dy + h, 2 + dx:2 + dx + w] = content[i, 0]
        np.testing.assert_array_equal(moved[i, 0], expected[2:2 + h, 2:2 + w])
        assert (moved[i] == 0).sum() == h * w - (h - abs(dy)) * (w - abs(dx))
    assert len(offsets) == 25  # every integer offset in [-2, 2]^2 occurs


# ---------------------------------------------------------------------------------------------
# random_resized_crop


def test_random_resized_crop_changes_images_but_not_a_constant_one():
    n = 50
    images = _images(n, c=3, h=20, w=24)
    seeds = np.arange(n, dtype=np.int64)
    out = augment_batch(images, ["random_resized_crop"], seeds)
    assert out.shape == (n, 3, 20, 24) and out.dtype == np.uint8
    assert _changed(out, images).mean() >= 0.9

    constant = np.full((n, 1, 20, 24), 77, dtype=np.uint8)
    np.testing.assert_array_equal(augment_batch(constant, ["random_resized_crop"], seeds), constant)


def test_random_resized_crop_zooms_in():
    """A crop narrower than the image, resized back, spans less of a left-to-right ramp."""
    ramp = np.broadcast_to(np.linspace(0, 255, 32).astype(np.uint8), (40, 1, 32, 32)).copy()
    out = augment_batch(ramp, ["random_resized_crop"], np.arange(40, dtype=np.int64))
    spans = out[:, 0].max(axis=(1, 2)).astype(int) - out[:, 0].min(axis=(1, 2)).astype(int)
    assert (spans <= 255).all() and (spans < 200).mean() >= 0.5


# ---------------------------------------------------------------------------------------------
# hflip


def test_hflip_flips_about_half_the_rows_exactly():
    n = 200
    images = _images(n, c=3, h=5, w=7)
    out = augment_batch(images, ["hflip"], np.arange(n, dtype=np.int64))
    flipped = np.array([np.array_equal(out[i], images[i, :, :, ::-1]) for i in range(n)])
    unchanged = np.array([np.array_equal(out[i], images[i]) for i in range(n)])
    assert (flipped ^ unchanged).all()  # each row is exactly one of the two
    assert 70 <= flipped.sum() <= 130


# ---------------------------------------------------------------------------------------------
# randaugment


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_changes_most_images_deterministically(channels):
    n = 16
    images = _images(n, c=channels, h=16, w=16)
    seeds = np.arange(100, 100 + n, dtype=np.int64)
    torch_state = torch.get_rng_state().clone()

    out = augment_batch(images, ["randaugment"], seeds)

    assert torch.equal(torch.get_rng_state(), torch_state)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert _changed(out, images).mean() >= 0.8
    np.testing.assert_array_equal(augment_batch(images, ["randaugment"], seeds), out)
    other = augment_batch(images, ["randaugment"], seeds + 1000)
    assert _changed(other, out).mean() >= 0.5  # other seeds, other ops


# ---------------------------------------------------------------------------------------------
# mix_batch and soft_cross_entropy


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_no_mixing_returns_x_and_smoothed_one_hot():
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 3, 9, 3, 1])
    out, targets = mix_batch(x, y, 10, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1,
                             generator=_generator(0))
    assert torch.equal(out, x)
    assert targets.shape == (5, 10) and targets.dtype == torch.float32
    expected = torch.full((5, 10), 0.01)
    expected[torch.arange(5), y] = 0.91
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(1), torch.ones(5))


def test_mixup_blends_with_the_reversed_batch():
    n = 6
    x, y = torch.randn(n, 1, 4, 4), torch.arange(n)
    out, targets = mix_batch(x, y, n, mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.0,
                             generator=_generator(3))
    lam = float(targets[0, 0])
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(targets.sum(1), torch.ones(n))
    for i in range(n):  # n is even: no row is its own partner
        assert targets[i, i].item() == pytest.approx(lam, abs=1e-6)
        assert targets[i, n - 1 - i].item() == pytest.approx(1 - lam, abs=1e-6)
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.flip(0))
    again, _ = mix_batch(x, y, n, mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.0,
                         generator=_generator(3))
    assert torch.equal(again, out)


def test_cutmix_lam_is_the_unmixed_area_share():
    n, h, w = 4, 16, 20
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, h, w).clone()
    y = torch.arange(n)
    mixed_some = 0
    for seed in range(20):
        out, targets = mix_batch(x, y, n, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0,
                                 generator=_generator(seed))
        torch.testing.assert_close(targets.sum(1), torch.ones(n))
        for i in range(n):
            own = (out[i] == i).float().mean().item()
            partner = (out[i] == n - 1 - i).float().mean().item()
            assert own + partner == pytest.approx(1.0)  # every pixel is from one of the two
            assert targets[i, i].item() == pytest.approx(own, abs=1e-6)
        pasted = out[0, 0] == n - 1
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        if len(rows):
            mixed_some += 1
            box = pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all()  # the pasted region is one rectangle
    assert mixed_some >= 15


def test_both_alphas_pick_mixup_or_cutmix_about_evenly():
    n = 4
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 16, 16).clone()
    cutmix = 0
    for seed in range(60):
        out, _ = mix_batch(x, torch.arange(n), n, mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.0,
                           generator=_generator(seed))
        integral = bool((out == out.round()).all())  # cutmix copies pixels, mixup blends them
        cutmix += integral
    assert 15 <= cutmix <= 45


def test_soft_cross_entropy_matches_cross_entropy():
    logits, y = torch.randn(7, 5), torch.tensor([0, 4, 2, 2, 1, 3, 0])
    one_hot = F.one_hot(y, 5).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, y))
    _, smoothed = mix_batch(torch.zeros(7, 1, 2, 2), y, 5, mixup_alpha=0.0, cutmix_alpha=0.0,
                            label_smoothing=0.1, generator=_generator(0))
    torch.testing.assert_close(soft_cross_entropy(logits, smoothed),
                               F.cross_entropy(logits, y, label_smoothing=0.1))


# ---------------------------------------------------------------------------------------------
# make_optimizer


RECIPE = dict(optimizer="adamw", lr=0.1, weight_decay=0.01, momentum=0.9, nesterov=False, schedule="cosine",
              epochs=3, steps_per_epoch=7, warmup_epochs=0.0, step_milestones=[], step_gamma=0.1)


def _lrs(steps: int, **overrides) -> list[float]:
    """The learning rate at optimizer steps 0..steps-1 (stepping the scheduler once per step)."""
    opt, sched = make_optimizer(nn.Linear(2, 2), **{**RECIPE, **overrides})
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_optimizer_by_name():
    opt, _ = make_optimizer(nn.Linear(2, 2), **RECIPE)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    opt, sched = make_optimizer(nn.Linear(2, 2), **{**RECIPE, "optimizer": "sgd", "nesterov": True})
    assert isinstance(opt, torch.optim.SGD) and isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    group = opt.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 0.01)


def test_cosine_without_warmup_is_bit_identical_to_the_old_formula():
    total = 3 * 7
    _, sched = make_optimizer(nn.Linear(2, 2), **RECIPE)
    for step in [0, 1, 5, 10, 20, 21, 30]:
        assert sched.lr_lambdas[0](step) == 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    lrs = _lrs(total)
    for step, lr in enumerate(lrs):
        assert lr == 0.1 * (0.5 * (1 + math.cos(math.pi * step / total)))


def test_warmup_rises_linearly_then_cosine_decays():
    lrs = _lrs(20, epochs=4, steps_per_epoch=5, warmup_epochs=1.0)  # 5 warmup steps of 20
    for step in range(5):
        assert lrs[step] == pytest.approx(0.1 * (step + 1) / 5)
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1)  # cosine starts at the peak after warmup
    assert lrs[12] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))  # strictly decreasing afterwards
    _, sched = make_optimizer(nn.Linear(2, 2), **{**RECIPE, "epochs": 4, "steps_per_epoch": 5,
                                                  "warmup_epochs": 1.0})
    assert sched.lr_lambdas[0](20) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_multiplies_by_gamma_at_each_milestone_epoch():
    lrs = _lrs(24, schedule="step", epochs=6, steps_per_epoch=4, step_milestones=[2, 4], step_gamma=0.1)
    assert lrs[0] == lrs[7] == pytest.approx(0.1)
    assert lrs[8] == lrs[15] == pytest.approx(0.01)
    assert lrs[16] == lrs[23] == pytest.approx(0.001)


def test_step_schedule_warmup_factor_times_gamma():
    """During warmup the step schedule's multiplier is the warmup factor times gamma^(milestones passed)."""
    lrs = _lrs(24, schedule="step", epochs=6, steps_per_epoch=4, warmup_epochs=3.0, step_milestones=[2, 4],
               step_gamma=0.1)
    assert lrs[0] == pytest.approx(0.1 * 1 / 12)
    assert lrs[7] == pytest.approx(0.1 * 8 / 12)
    assert lrs[8] == pytest.approx(0.1 * 9 / 12 * 0.1)  # in warmup and past milestone 2
    assert lrs[12] == pytest.approx(0.01)
    assert lrs[16] == pytest.approx(0.001)


@pytest.mark.parametrize("overrides, field", [
    ({"optimizer": "lion"}, "train.optimizer"),
    ({"schedule": "linear"}, "train.schedule"),
])
def test_unknown_optimizer_or_schedule_raises(overrides, field):
    with pytest.raises(ValueError, match=field) as err:
        make_optimizer(nn.Linear(2, 2), **{**RECIPE, **overrides})
    valid = ["adamw", "sgd"] if field == "train.optimizer" else ["cosine", "step"]
    assert all(v in str(err.value) for v in valid)


@pytest.mark.parametrize("milestones", [[2, 2], [3, 1], [0, 2], [1, 3]])
def test_bad_milestones_are_refused_before_any_work(milestones):
    """check_recipe (the stage check, before Ray starts) refuses them; make_optimizer does not
    (a curriculum of fewer epochs than train.epochs simply never reaches the later ones)."""
    problems = check_recipe("sgd", "step", 0.1, 0.9, 0.0, RECIPE["epochs"], milestones, 0.1, 0.0, 0.0, 0.0, [])
    assert len(problems) == 1 and "train.step_milestones" in problems[0]


def test_scheduler_state_round_trips_with_weights_only():
    opt, sched = make_optimizer(nn.Linear(2, 2), **{**RECIPE, "warmup_epochs": 1.0})
    for _ in range(9):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    opt2, sched2 = make_optimizer(nn.Linear(2, 2), **{**RECIPE, "warmup_epochs": 1.0})
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 9
    assert sched2.get_last_lr() == sched.get_last_lr()
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert sched2.get_last_lr() == sched.get_last_lr()


# ---------------------------------------------------------------------------------------------
# check_recipe


GOOD = dict(optimizer="sgd", schedule="step", lr=0.1, momentum=0.9, warmup_epochs=1.0, epochs=10,
            step_milestones=[3, 6], step_gamma=0.1, label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0,
            augment=["shift", "hflip"])


def test_a_good_recipe_has_no_problems():
    assert check_recipe(**GOOD) == []
    assert check_recipe(**{**GOOD, "schedule": "cosine", "step_milestones": []}) == []


@pytest.mark.parametrize("overrides, field", [
    ({"optimizer": "lion"}, "train.optimizer"),
    ({"schedule": "linear"}, "train.schedule"),
    ({"momentum": 1.0}, "train.momentum"),
    ({"momentum": -0.1}, "train.momentum"),
    ({"warmup_epochs": 10.0}, "train.warmup_epochs"),
    ({"warmup_epochs": -1.0}, "train.warmup_epochs"),
    ({"step_milestones": [6, 3]}, "train.step_milestones"),
    ({"step_milestones": [0, 3]}, "train.step_milestones"),
    ({"step_milestones": [3, 10]}, "train.step_milestones"),
    ({"step_gamma": 0.0}, "train.step_gamma"),
    ({"label_smoothing": 1.0}, "train.label_smoothing"),
    ({"label_smoothing": -0.1}, "train.label_smoothing"),
    ({"mixup_alpha": -0.2}, "train.mixup"),
    ({"cutmix_alpha": -1.0}, "train.cutmix"),
    ({"augment": ["shift", "blur"]}, "train.augment"),
])
def test_each_bad_field_is_named(overrides, field):
    problems = check_recipe(**{**GOOD, **overrides})
    assert len(problems) == 1, problems
    assert field in problems[0]


def test_messages_say_what_would_be_valid():
    (optimizer,) = check_recipe(**{**GOOD, "optimizer": "lion"})
    assert "lion" in optimizer and "adamw" in optimizer and "sgd" in optimizer
    (augment,) = check_recipe(**{**GOOD, "augment": ["blur"]})
    assert "blur" in augment and all(name in augment for name in AUGMENTATIONS)
