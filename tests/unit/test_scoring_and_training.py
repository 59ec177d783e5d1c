import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from sklearn.metrics import f1_score

from raysys.core.config import TrainConfig
from raysys.data.images import encode_png
from raysys.data.sources import load_builtin
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.scoring.difficulty import DifficultyScorer, assign_folds, scores_from_probs
from raysys.core.context import LocalContext
from raysys.training.classifier import evaluate, make_optimizer, predict, train_epoch
from raysys.data.stream import Decode, index_rows, read_images, row_seeds, split_rows, stream_refs
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
def digits_split(tmp_path_factory):
    """The 1,797 8x8 digits as a Parquet file of PNGs: (its files, train rows, test rows), rows
    without images (raysys.data.stream.index_rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = load_builtin("digits")
    path = str(tmp_path_factory.mktemp("digits") / "digits.parquet")
    split = ["train"] * 1200 + ["test"] * (len(src.labels) - 1200)
    pq.write_table(pa.table({"image": src.images, "label": pa.array(src.labels, pa.int32()), "split": split}), path,
                   row_group_size=100)
    rows = index_rows([path], ["label", "split"])
    return [path], split_rows(rows, "train"), split_rows(rows, "test")


def test_training_learns_digits_and_scorer_agrees(digits_split, tmp_path):
    torch.manual_seed(0)
    files, train, test = digits_split
    ctx = LocalContext(str(tmp_path / "ckpt"))
    decode, decode_train = Decode(files, 8, 1), Decode(files, 8, 1, ("shift",))
    groups = {"many": list(range(10)), "medium": [], "few": []}
    model = create_classifier("small_cnn", 10, 1, width=16)
    before = evaluate(model, ctx, test, decode, 10, groups, torch.device("cpu"))["acc"]
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.005)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch=len(train) // 32 + 1)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen).numpy()
        refs = stream_refs(train, order, row_seeds(len(order), 0, epoch))
        losses.append(train_epoch(model, ctx, refs, decode_train, opt, sched, recipe=cfg, num_classes=10,
                                  generator=gen, device=torch.device("cpu")))
    after = evaluate(model, ctx, test, decode, 10, groups, torch.device("cpu"))
    assert losses[-1] < losses[0] * 0.5
    assert after["acc"] > 0.85 > before + 0.3

    # The scorer, loading the saved model, reproduces the model's own predictions.
    save_classifier(model, str(tmp_path / "m"), {"name": "small_cnn", "num_classes": 10, "in_chans": 1,
                                                 "width": 16, "image_size": 8})
    scorer = DifficultyScorer({"full": str(tmp_path / "m")})
    first = test.slice(0, 64)
    images = read_images(files, first["file"].to_numpy(), first["row"].to_numpy())
    labels = first["label"].to_numpy().astype(np.int64)
    s = scorer(images, labels, ["full"] * 64)
    _, p_true = predict(model, ctx, stream_refs(first), decode, torch.device("cpu"))
    assert s["p_true"] == pytest.approx(p_true, abs=1e-5)
    assert ((s["difficulty"] >= 0) & (s["difficulty"] <= 1)).all()
    # right predictions are easier than wrong ones
    right = s["pred"] == labels
    assert s["difficulty"][right].mean() < s["difficulty"][~right].mean() if (~right).any() else True


def test_a_block_reads_each_row_group_once_and_images_by_reference(tmp_path):
    """read_images returns the rows asked for, in the order asked, from bytes in a row group or
    from the file at `uri`; Decode augments a row by its seed alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pixels = [np.full((4, 4), 10 * i, np.uint8) for i in range(12)]
    (tmp_path / "by_ref.png").write_bytes(encode_png(np.full((4, 4), 255, np.uint8)))
    images = [encode_png(p) for p in pixels]
    images[5] = None
    uris = [None] * 12
    uris[5] = str(tmp_path / "by_ref.png")
    path = str(tmp_path / "part.parquet")
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "uri": uris, "label": list(range(12))}), path,
                   row_group_size=5)
    order = np.array([11, 0, 5, 6, 0])
    got = read_images([path], np.zeros(5, np.int64), order)
    assert [got[i] for i in (0, 1, 3, 4)] == [images[11], images[0], images[6], images[0]]
    assert got[2] == (tmp_path / "by_ref.png").read_bytes()
    rows = index_rows([path], ["label"], where=pc.field("label") >= 3)
    assert rows["row"].to_pylist() == list(range(3, 12)) and set(rows["file"].to_pylist()) == {0}
    out = Decode([path], 4, 1)(stream_refs(rows))
    assert out["image"].shape == (9, 1, 4, 4) and out["image"][:, 0, 0, 0].tolist()[:2] == [30, 40]
    assert out["label"].tolist() == list(range(3, 12))
    shifted = Decode([path], 4, 1, ("shift",))
    alone = shifted(stream_refs(rows.slice(4, 1), seeds=np.array([7])))["image"]
    among = shifted(stream_refs(rows, seeds=np.arange(9) * 0 + 7))["image"][4:5]
    assert np.array_equal(alone, among)


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


def test_decoding_ahead_keeps_the_order_and_raises_the_decoders_error(tmp_path):
    from raysys.data.stream import decoded_batches

    class Numbered:
        def __call__(self, block):
            if block["row"][0].as_py() >= 40:
                raise ValueError("row 40 is unreadable")
            return {"label": block["label"].to_numpy().astype(np.int64)}

    import pyarrow as pa

    refs = pa.table({"file": pa.array([0] * 50, pa.int32()), "row": np.arange(50), "label": np.arange(50)})
    got = []
    with pytest.raises(ValueError, match="row 40"):
        for batch in decoded_batches(refs, Numbered(), 8, prefetch=3):
            got.extend(batch["label"].tolist())
    assert got == list(range(40))
    ahead = [b["label"].tolist() for b in decoded_batches(refs.slice(0, 40), Numbered(), 8, prefetch=2)]
    assert ahead == [b["label"].tolist() for b in decoded_batches(refs.slice(0, 40), Numbered(), 8)]


def test_a_decode_reads_a_row_group_once_while_its_cache_holds_it(tmp_path, monkeypatch):
    """Blocks that come back to a row group read it from the Decode's cache, which never holds
    more than its byte limit (the oldest group goes first); a pickled copy starts empty."""
    import pickle

    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysys.data import stream

    path = str(tmp_path / "part.parquet")
    images = [encode_png(np.full((4, 4), i, np.uint8)) for i in range(40)]
    pq.write_table(pa.table({"image": images, "label": list(range(40))}), path, row_group_size=10)
    rows = index_rows([path], ["label"])
    reads = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, g, **kw: reads.append(g) or original(self, g, **kw))
    decode = Decode([path], 4, 1)
    for _ in range(3):
        out = decode(stream_refs(rows, np.array([0, 15, 39, 1])))
        assert out["image"][:, 0, 0, 0].tolist() == [0, 15, 39, 1]
    assert sorted(reads) == [0, 1, 3]  # each group once, not once per block
    small = Decode([path], 4, 1, cache_bytes=sum(len(b) for b in images[:10]) + 200)
    reads.clear()
    for _ in range(2):
        small(stream_refs(rows, np.array([0, 15])))
    assert reads == [0, 1, 0, 1] and len(small._cache.groups) == 1
    copy = pickle.loads(pickle.dumps(decode))
    assert len(copy._cache.groups) == 0 and copy.files == decode.files
