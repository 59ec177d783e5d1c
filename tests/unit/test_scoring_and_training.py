import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from raysys.core.config import TrainConfig
from raysys.data.images import encode_png
from raysys.data.sources import load_builtin
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.scoring.difficulty import DifficultyScorer, assign_folds, scores_from_probs
from raysys.training.classifier import LabelledImages, evaluate, make_optimizer, train_epoch
from raysys.training.metrics import classification_metrics


def test_scores_from_probs_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    s = scores_from_probs(probs, torch.tensor([0, 1]))
    assert s["difficulty"] == pytest.approx([0.3, 0.75])
    assert s["p_true"] == pytest.approx([0.7, 0.25])
    assert s["loss"] == pytest.approx([-np.log(0.7), -np.log(0.25)], rel=1e-5)
    assert s["pred"].tolist() == [0, 2]
    assert s["entropy"][1] == pytest.approx(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)), rel=1e-5)


def test_assign_folds_stratified_and_deterministic():
    labels = np.repeat(np.arange(3), [9, 6, 3])
    ids = [f"id{i}" for i in range(len(labels))]
    folds = assign_folds(ids, labels, 3, seed=0)
    for c in range(3):
        assert np.bincount(folds[labels == c], minlength=3).tolist() == [np.sum(labels == c) // 3] * 3
    assert (assign_folds(ids, labels, 3, seed=0) == folds).all()
    assert (assign_folds(ids, labels, 3, seed=5) != folds).any()


def test_metrics_match_sklearn_and_groups():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    p = np.array([0, 0, 0, 1, 1, 0, 2, 0])
    m = classification_metrics(y, p, 3, {"many": [0], "medium": [1], "few": [2]})
    assert m["acc"] == pytest.approx(5 / 8)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["per_class_acc"] == pytest.approx([0.75, 0.5, 0.5])
    assert (m["acc_many"], m["acc_medium"], m["acc_few"]) == pytest.approx((0.75, 0.5, 0.5))
    assert m["worst_class_acc"] == pytest.approx(0.5)
    assert classification_metrics(y, p, 3, {"many": [0, 1, 2], "medium": [], "few": []})["acc_few"] is None
    # An OOD split without any image of class 3 (of 5): no accuracy for it, macro-F1 as sklearn's
    absent = classification_metrics(y, p, 5, {"many": [0, 1], "medium": [2], "few": [3, 4]})
    assert absent["per_class_acc"][3:] == [None, None] and absent["acc_few"] is None and absent["images"] == 8
    assert absent["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert absent["worst_class_acc"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def digits_split():
    src = load_builtin("digits")
    from raysys.data.images import decode_batch

    x = torch.from_numpy(decode_batch(src.images, 8, 1))
    y = torch.from_numpy(src.labels)
    return LabelledImages(x[:1200], y[:1200]), LabelledImages(x[1200:], y[1200:])


def test_training_learns_digits_and_scorer_agrees(digits_split, tmp_path):
    torch.manual_seed(0)
    train, test = digits_split
    groups = {"many": list(range(10)), "medium": [], "few": []}
    model = create_classifier("small_cnn", 10, 1, width=16)
    before = evaluate(model, test, 10, groups, torch.device("cpu"))["acc"]
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.005)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch=len(train) // 32 + 1)
    gen = torch.Generator().manual_seed(0)
    losses = [
        train_epoch(model, train, torch.randperm(len(train), generator=gen), opt, sched,
                    batch_size=32, augment=True, generator=gen, device=torch.device("cpu"))
        for _ in range(cfg.epochs)
    ]
    after = evaluate(model, test, 10, groups, torch.device("cpu"))
    assert losses[-1] < losses[0] * 0.5
    assert after["acc"] > 0.85 > before + 0.3

    # The scorer, loading the saved model, reproduces the model's own predictions.
    save_classifier(model, str(tmp_path / "m"), {"name": "small_cnn", "num_classes": 10, "in_chans": 1,
                                                 "width": 16, "image_size": 8})
    scorer = DifficultyScorer({"full": str(tmp_path / "m")})
    images = [encode_png(img[0].numpy()) for img in test.images[:64]]
    s = scorer(images, test.labels[:64].numpy(), ["full"] * 64)
    model.eval()
    with torch.no_grad():
        from raysys.models.classifiers import normalize

        expected = torch.softmax(model(normalize(test.images[:64])), 1)
    p_true = expected.gather(1, test.labels[:64].view(-1, 1)).squeeze(1).numpy()
    assert s["p_true"] == pytest.approx(p_true, abs=1e-5)
    assert ((s["difficulty"] >= 0) & (s["difficulty"] <= 1)).all()
    # right predictions are easier than wrong ones
    right = s["pred"] == test.labels[:64].numpy()
    assert s["difficulty"][right].mean() < s["difficulty"][~right].mean() if (~right).any() else True


def test_fold_of_a_row_does_not_depend_on_row_order():
    """Fold training (in the worker) and fold scoring (in the score stage) both call
    assign_folds; a row must land in the same fold whatever order the rows come in,
    or a fold model could score rows it trained on."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    ids = [f"s{i}" for i in range(200)]
    folds = dict(zip(ids, assign_folds(ids, labels, 3, seed=1)))
    perm = rng.permutation(200)
    shuffled = assign_folds([ids[i] for i in perm], labels[perm], 3, seed=1)
    assert all(folds[ids[i]] == f for i, f in zip(perm, shuffled))
