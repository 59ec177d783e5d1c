"""The curriculum's training pieces in plain torch: pool, epoch mix, guidance-validation split,
Balanced Softmax prior, worst-k accuracy."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysys.schedules.base import REAL_ONLY, Level, Selection
from raysys.training.curriculum import log_prior, worst_k_accuracy
from raysys.training.guidance_validation import split_guidance_val
from raysys.training.synthetic_pool import (
    build_pool,
    difficulty_weights,
    epoch_mix,
    mix_size,
    steps_per_epoch,
    select_measured,
    subsample_pool,
)

BINS = [0.0, 0.5, 1.0]


def tables():
    real_labels = [0] * 20 + [1] * 10 + [2] * 4  # class 2 is the tail
    real = pa.table({"sample_id": [f"r{i}" for i in range(len(real_labels))],
                     "label": pa.array(real_labels, pa.int32()),
                     "file": pa.array([0] * len(real_labels), pa.int32()), "row": np.arange(len(real_labels))})
    rows = []
    for src in ("r30", "r31", "r32", "r33"):  # the 4 tail images guide 2 λ x 2 seeds each
        for lam in (0.3, 0.7):
            for k in range(2):
                rows.append((f"{src}-{lam}-{k}", src, lam, 0.2 if k == 0 else 0.8))
    rows.append(("text-0", None, None, 0.9))  # one text-to-image row
    syn = pa.table({"sample_id": [r[0] for r in rows],
                    "file": pa.array([1] * len(rows), pa.int32()), "row": np.arange(len(rows)),
                    "label": pa.array([2] * len(rows), pa.int32()), "source_id": [r[1] for r in rows],
                    "guidance": pa.array([r[2] for r in rows], pa.float32()),
                    "requested_difficulty": pa.array([r[3] for r in rows], pa.float32())})
    return real, syn


def test_pool_and_level_matching():
    real, syn = tables()
    pool = build_pool(real, syn, few=[2], difficulty_bins=BINS)
    assert pool.n_real == 34 and len(pool) == 34 + 17 and pool.rows.num_rows == 51
    assert pool.matches(Level(guidance=0.3)).sum() == 8  # float32 0.3 matches the config's 0.3
    assert pool.matches(Level(difficulty_bin=1)).sum() == 9  # s 0.8 and 0.9
    assert pool.matches(Level(guidance=0.7, difficulty_bin=0)).sum() == 4
    assert pool.tail.sum() == 4 + 17


def test_epoch_mix_counts_selection_and_determinism():
    real, syn = tables()
    pool = build_pool(real, syn, few=[2], difficulty_bins=BINS)
    only_real = epoch_mix(pool, REAL_ONLY, epoch=0, seed=0, synthetic_per_epoch=0.5, undersample=0.5)
    assert only_real.synthetic == 0 and only_real.real == 4 + 15  # all 4 tail images, half of the 30 others
    assert set(range(30, 34)) <= set(only_real.indices.tolist())
    mix = epoch_mix(pool, Selection((Level(guidance=0.7),)), epoch=3, seed=0, synthetic_per_epoch=0.5, undersample=1.0)
    assert mix.real == 34 and mix.synthetic == 17 and mix.matching == 8
    syn_rows = mix.indices[mix.indices >= 34]
    assert pool.matches(Level(guidance=0.7))[syn_rows].all()
    again = epoch_mix(pool, Selection((Level(guidance=0.7),)), epoch=3, seed=0, synthetic_per_epoch=0.5, undersample=1.0)
    other = epoch_mix(pool, Selection((Level(guidance=0.7),)), epoch=4, seed=0, synthetic_per_epoch=0.5, undersample=1.0)
    assert np.array_equal(mix.indices, again.indices) and not np.array_equal(mix.indices, other.indices)
    none = epoch_mix(pool, Selection((Level(guidance=0.1),)), epoch=0, seed=0, synthetic_per_epoch=0.5, undersample=1.0)
    assert none.matching == 0 and none.synthetic == 0  # nothing at that level: a real-only epoch


def test_guidance_val_holds_out_sources_with_every_level():
    real, syn = tables()
    rest_real, rest_syn, held_real, held_syn = split_guidance_val(real, syn, 2, seed=0)
    held = set(held_real["sample_id"].to_pylist())
    assert len(held) == 2 and held <= {"r30", "r31", "r32", "r33"}
    assert not held & set(rest_real["sample_id"].to_pylist())
    assert set(held_syn["source_id"].to_pylist()) == held and len(held_syn) == 8
    assert not held & set(s for s in rest_syn["source_id"].to_pylist() if s)
    assert len(rest_real) == 32 and len(rest_syn) == 9
    with pytest.raises(ValueError, match="only 4 source images"):
        split_guidance_val(real, syn, 5, seed=0)


def test_guidance_val_takes_sources_from_every_domain():
    real, syn = tables()
    domain_of = {"r30": "camA", "r31": "camA", "r32": "camA", "r33": "camB"}  # camB has one source
    domains = [domain_of.get(sid, "camA") for sid in real["sample_id"].to_pylist()]
    real = real.append_column("domain", pa.array(domains, pa.string()))
    for seed in range(6):  # whatever the hash order: two sources, one of them camB's only one
        _, _, held_real, _ = split_guidance_val(real, syn, 2, seed=seed)
        assert sorted(held_real["domain"].to_pylist()) == ["camA", "camB"]
    without = split_guidance_val(real.drop_columns(["domain"]), syn, 2, seed=0)[2]["sample_id"].to_pylist()
    assert len(without) == 2


def test_balanced_softmax_prior_and_worst_k():
    prior = log_prior(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(prior.exp().sum(), torch.tensor(1.0))
    assert prior[0] > prior[1] and prior[1] == prior[2]  # an absent class counts as 1 (no log 0)
    assert worst_k_accuracy([0.9, 0.1, None, 0.5, 0.3], 2) == pytest.approx(0.2)


def test_difficulty_weights_make_draws_follow_the_target_distribution():
    rng = np.random.default_rng(0)
    pool_s = np.concatenate([rng.uniform(0, 1, 4000), rng.uniform(0, 0.2, 4000)])  # twice as dense below 0.2
    pool_s = np.concatenate([pool_s, [np.nan] * 10])
    means = []
    for mu in (0.3, 0.5, 0.7, 0.9):
        w = difficulty_weights(pool_s, "normal", [mu, 0.1])
        assert (w[-10:] == 0).all()  # rows without s are never drawn
        drawn = pool_s[rng.choice(len(pool_s), size=20000, p=w / w.sum())]
        means.append(drawn.mean())
        assert abs(np.std(drawn) - 0.1) < 0.03 or mu == 0.9  # μ=0.9 is cut at s=1
    assert np.all(np.diff(means) > 0.15) and abs(means[0] - 0.3) < 0.02 and abs(means[1] - 0.5) < 0.02
    # Without dividing by the pool's density, the dense low end would drag μ=0.3 down.
    naive = np.exp(-0.5 * ((np.nan_to_num(pool_s, nan=-9) - 0.3) / 0.1) ** 2)
    assert pool_s[rng.choice(len(pool_s), size=20000, p=naive / naive.sum())].mean() < means[0] - 0.02
    uni = difficulty_weights(pool_s, "uniform", [0.4, 0.6])
    assert ((uni > 0) == ((pool_s >= 0.4) & (pool_s <= 0.6))).all()
    beta = difficulty_weights(pool_s, "beta", [8, 2])
    assert pool_s[rng.choice(len(pool_s), size=20000, p=beta / beta.sum())].mean() == pytest.approx(0.8, abs=0.02)
    with pytest.raises(ValueError, match="unknown difficulty distribution"):
        difficulty_weights(pool_s, "gamma", [1, 1])


def test_weighted_draws_and_equal_steps_in_the_epoch_mix():
    real, syn = tables()
    pool = build_pool(real, syn, few=[2], difficulty_bins=BINS)
    hard = difficulty_weights(pool.requested, "uniform", [0.5, 1.0])
    mix = epoch_mix(pool, Selection((Level(),)), epoch=0, seed=0, synthetic_per_epoch=1.0, undersample=1.0,
                    draw_weights=hard)
    assert mix.matching == 9 and mix.synthetic == 34  # only the rows with s 0.8 or 0.9
    assert (pool.requested[mix.indices[mix.indices >= 34]] >= 0.8).all()
    equal = epoch_mix(pool, Selection((Level(),)), epoch=0, seed=0, synthetic_per_epoch=1.0, undersample=1.0,
                      equal_steps=True)
    assert len(equal.indices) == equal.real + equal.synthetic == 34  # as many rows as a real-only epoch
    assert 8 <= equal.synthetic <= 26  # about half of them synthetic
    assert mix_size(pool, 1.0, 1.0, equal_steps=True) == 34 and mix_size(pool, 0.5, 0.5, False) == 19 + 10


def test_the_lr_schedule_counts_the_steps_a_run_takes():
    """A real-only epoch takes only its real rows' steps, so the LR schedule is sized without synthetic
    rows there: a real-only run's cosine ends at zero where the run ends."""
    from raysys.schedules.registry import create_schedule

    real, syn = tables()
    pool = build_pool(real, syn, few=[2], difficulty_bins=BINS)  # 34 real rows
    kw = dict(synthetic_per_epoch=1.0, undersample=1.0, equal_steps=False, world=1, batch_size=4)
    real_only = create_schedule("real_only", epochs=4, curriculum_epochs=4, guidance_levels=[0.5])
    assert steps_per_epoch(pool, real_only, 4, **kw) == 9  # ceil(34 / 4), not ceil(68 / 4)
    every = create_schedule("all_levels", epochs=4, curriculum_epochs=4, guidance_levels=[0.5])
    assert steps_per_epoch(pool, every, 4, **kw) == 17
    tail = create_schedule("all_levels", epochs=4, curriculum_epochs=3, guidance_levels=[0.5])
    assert steps_per_epoch(pool, tail, 4, **kw) == 15  # ceil((3 x 17 + 9) / 4)
    adaptive = create_schedule("adaptive", epochs=4, curriculum_epochs=2, guidance_levels=[0.5])
    assert steps_per_epoch(pool, adaptive, 4, **kw) == 13  # its levels are not chosen yet; its tail is known
    assert steps_per_epoch(pool, every, 4, **{**kw, "equal_steps": True}) == 9


def test_select_measured_keeps_rows_in_the_range():
    t = pa.table({"sample_id": ["a", "b", "c", "d"], "difficulty": pa.array([0.01, 0.3, 0.9, None], pa.float32())})
    assert select_measured(t, 0.0, 0.1)["sample_id"].to_pylist() == ["a"]
    assert select_measured(t, 0.2, 1.0)["sample_id"].to_pylist() == ["b", "c"]


def test_a_schedule_that_can_never_draw_a_synthetic_image_is_an_error():
    from raysys.schedules.registry import create_schedule
    from raysys.training.synthetic_pool import check_selections_match

    real, syn = tables()
    text_only_rows = syn.filter(pa.array([g is None for g in syn["guidance"].to_pylist()]))
    pool = build_pool(real, text_only_rows, few=[2], difficulty_bins=BINS)
    by_lambda = create_schedule("all_levels", epochs=4, curriculum_epochs=3, guidance_levels=[0.1, 0.5])
    with pytest.raises(ValueError, match="no synthetic image of plans \\['plain'\\] matches any level"):
        check_selections_match(by_lambda, pool, 4, None, ["plain"])
    any_level = create_schedule("all_levels", epochs=4, curriculum_epochs=3, guidance_levels=[])
    check_selections_match(any_level, pool, 4, None, ["plain"])  # Level() matches the text rows
    with pytest.raises(ValueError, match="difficulty_distribution"):  # the one row has s 0.9: weight 0 under U(0, 0.5)
        check_selections_match(any_level, pool, 4, difficulty_weights(pool.requested, "uniform", [0.0, 0.5]), ["plain"])
    full = build_pool(real, syn, few=[2], difficulty_bins=BINS)
    check_selections_match(create_schedule("all_levels", epochs=4, curriculum_epochs=3, guidance_levels=[0.1, 0.3]),
                           full, 4, None, ["discl"])  # λ 0.1 matches nothing, λ 0.3 does: only a warning per epoch


def test_guidance_val_keeps_only_the_levels_a_schedule_walks():
    from raysys.training.guidance_validation import build_guidance_val

    real, syn = tables()
    _, _, held_real, held_syn = split_guidance_val(real, syn, 2, seed=0)
    gval = build_guidance_val(held_real, held_syn)
    assert sorted(gval.by_level) == [0.3, 0.7]
    only = gval.only_levels([0.7, 0.9])  # float32 0.7 from Parquet matches the config's 0.7
    assert sorted(only.by_level) == [0.7] and len(only.by_level[0.7]) == 4 and only.real is gval.real


def test_the_adaptive_probe_does_not_depend_on_the_callers_random_state(tmp_path):
    """A run resumed at a stage's first epoch enters the probe with another global torch RNG state
    than the uninterrupted run (which just trained an epoch): the probe's draws (rows, dropout)
    must come from (seed, epoch) alone, or the resumed run can choose another λ."""
    import pyarrow.parquet as pq

    from raysys.core.context import LocalContext
    from raysys.data.sources import load_builtin_digits
    from raysys.data.stream import Decode, index_rows
    from raysys.models.classifiers import create_classifier
    from raysys.training.adaptive_probe import probe_gains_inputs
    from raysys.training.guidance_validation import GuidanceVal

    src = load_builtin_digits()
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"image": src.images[:300], "label": pa.array(src.labels[:300], pa.int32())}), path)
    rows = index_rows([path], ["label"])
    gval = GuidanceVal(rows.slice(0, 40), {0.3: rows.slice(40, 40), 0.7: rows.slice(80, 40)})
    model = create_classifier("small_cnn", 10, 1, width=8)  # has dropout
    ctx, decode = LocalContext(str(tmp_path / "ckpt")), Decode([path], 8, 1)

    def probe(global_seed):
        torch.manual_seed(global_seed)
        _, after = probe_gains_inputs(model, ctx, gval, rows.slice(120), decode, steps=3, batch_size=32, lr=0.01,
                                      seed=0, epoch=8, device=torch.device("cpu"))
        return after, torch.rand(1).item()

    (a, rand_a), (b, rand_b) = probe(1), probe(2)
    assert all(np.array_equal(a[g], b[g]) for g in (0.3, 0.7))
    assert rand_a != rand_b  # the caller's own random stream is left as it was
    other_epoch, _ = probe_gains_inputs(model, ctx, gval, rows.slice(120), decode, steps=3, batch_size=32, lr=0.01,
                                        seed=0, epoch=9, device=torch.device("cpu"))
    assert not np.array_equal(other_epoch[0.3], a[0.3])


def test_the_image_budget_keeps_each_class_share_and_depends_on_the_seed():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    syn = pa.table({"sample_id": [f"s{i}" for i in range(100)], "label": pa.array(labels, pa.int32())})
    kept = subsample_pool(syn, 20, seed=0)
    counts = np.bincount(kept["label"].to_numpy(), minlength=3)
    assert len(kept) == 20 and counts.tolist() == [12, 6, 2]  # 60 / 30 / 10 % of the pool, as in the pool
    assert len(set(kept["sample_id"].to_pylist())) == 20  # without replacement
    assert kept["sample_id"].to_pylist() != subsample_pool(syn, 20, seed=1)["sample_id"].to_pylist()
    assert kept["sample_id"].to_pylist() == subsample_pool(syn, 20, seed=0)["sample_id"].to_pylist()
    assert subsample_pool(syn, 500, seed=0) is syn  # a budget above the pool keeps it whole


def test_a_synthetic_row_weight_scales_its_share_of_the_loss(tmp_path):
    """train_epoch with a per-row weight: weight 0 on a row = the same step as without the row's
    loss; weights 1 = the plain step."""
    import pyarrow.parquet as pq

    from raysys.core.config import TrainConfig
    from raysys.core.context import LocalContext
    from raysys.data.sources import load_builtin_digits
    from raysys.data.stream import Decode, index_rows, stream_refs
    from raysys.models.classifiers import create_classifier
    from raysys.training.classifier import make_optimizer, train_epoch

    src = load_builtin_digits()
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"image": src.images[:8], "label": pa.array(src.labels[:8], pa.int32())}), path)
    rows = index_rows([path], ["label"])
    recipe = TrainConfig(epochs=1, batch_size=8, lr=0.01, optimizer="sgd", momentum=0.0, weight_decay=0.0)

    def one_step(weights, keep=slice(None)):
        torch.manual_seed(0)
        model = create_classifier("small_cnn", 10, 1, width=8)
        model.eval()  # no dropout / batch statistics: the step depends on the loss alone
        model.train = lambda mode=True: model  # train_epoch calls model.train(); keep eval behaviour
        opt, sched = make_optimizer(model, recipe, 1)
        refs = stream_refs(rows, np.arange(8)[keep], weights=weights)
        train_epoch(model, LocalContext(str(tmp_path / "c")), refs, Decode([path], 8, 1), opt, sched, recipe=recipe,
                    num_classes=10, generator=torch.Generator(), device=torch.device("cpu"))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = one_step(None)
    assert torch.allclose(one_step(np.ones(8)), plain, atol=1e-6)
    half = one_step(np.array([1.0] * 4 + [0.0] * 4))
    only_first = one_step(None, slice(0, 4))  # the mean over 4 rows = 2 x (the sum over 4 rows / 8)
    start = one_step(np.zeros(8))  # weight 0 everywhere: no step at all
    assert torch.allclose(half - start, (only_first - start) / 2, atol=1e-5)
    assert not torch.allclose(half, plain, atol=1e-4)


def test_balanced_softmax_prior_on_the_real_rows_only():
    real, syn = tables()
    pool = build_pool(real, syn, few=[2], difficulty_bins=BINS)
    mix = epoch_mix(pool, Selection((Level(guidance=0.7),)), epoch=0, seed=0, synthetic_per_epoch=0.5, undersample=1.0)
    on_mix = log_prior(pool.labels[mix.indices], 3).exp()
    on_real = log_prior(pool.labels[mix.indices[mix.indices < pool.n_real]], 3).exp()
    assert on_real.tolist() == pytest.approx([20 / 34, 10 / 34, 4 / 34])  # the real long tail
    assert on_mix[2] == pytest.approx((4 + 17) / 51)  # the synthetic tail rows make class 2 look common
