"""Sampling plans: budgets, class shares, difficulty distributions, DisCL sources, prompts, ids."""

from typing import Optional

import numpy as np
import pyarrow as pa
import pytest
from transformers import CLIPTokenizer

from raysys.core.config import PlanConfig
from raysys.core.loading import ConfigError
from raysys.stages import load_config
from raysys.data.images import encode_png
from raysys.generation.plans import allocate, build_plan, choose_sources, class_counts, sample_difficulty
from raysys.generation.prompts import check_prompt_template, cut_prompts, fill_prompt, prompt_tokenizer
from raysys.generation.tokenizer import make_clip_tokenizer

REAL_FAKE = "photo of {name}, {caption}, best quality"

NAMES = [f"c{i}" for i in range(4)]
TRAIN_COUNTS = [40, 20, 8, 2]


def train_table(with_prompts: bool = False, captions: Optional[list[Optional[str]]] = None) -> pa.Table:
    """The real train rows of a scored manifest: 40, 20, 8 and 2 images of classes c0..c3; `captions`
    adds a `caption` column (one value a row)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), TRAIN_COUNTS)
    n = len(labels)
    table = pa.table({
        "sample_id": [f"real{i:03d}" for i in range(n)],
        "label": pa.array(labels, pa.int32()),
        "image": [encode_png(np.full((8, 8), i % 256, np.uint8)) for i in range(n)],
        "difficulty": pa.array(rng.uniform(0, 1, n), pa.float32()),
        "prompt": [f"caption {i}" for i in range(n)] if with_prompts else [None] * n,
    })
    return table if captions is None else table.append_column("caption", pa.array(captions, pa.string()))


def class_captions() -> list[Optional[str]]:
    """A caption per train row that names its class and row (`c1 thing 45`); class c3 has none."""
    labels = np.repeat(np.arange(4), TRAIN_COUNTS)
    return [None if label == 3 else f"c{label} thing {i}" for i, label in enumerate(labels)]


def test_allocate_is_exact_and_proportional():
    counts = allocate(10, np.array([1.0, 1.0, 1.0]))
    assert counts.sum() == 10 and sorted(counts) == [3, 3, 4]
    assert allocate(7, np.array([6.0, 1.0])).tolist() == [6, 1]
    assert allocate(0, np.ones(3)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("shares,expected", [
    ("uniform", [4, 4, 4, 4]),  # 0.25 * 70 = 17.5 -> 18 total, 4.5 each
    ("fill_to_max", [0, 20, 32, 38]),
])
def test_class_counts(shares, expected):
    counts = class_counts(PlanConfig(ratio=0.25, class_shares=shares), np.array(TRAIN_COUNTS))
    if shares == "uniform":
        assert counts.sum() == 18 and all(c in (4, 5) for c in counts)
    else:
        assert counts.tolist() == expected


def test_inverse_frequency_gives_the_tail_most():
    counts = class_counts(PlanConfig(ratio=1.0, class_shares="inverse_frequency"), np.array(TRAIN_COUNTS))
    assert counts.sum() == 70 and list(counts) == sorted(counts)  # rising towards the rarest class
    assert counts[3] > 10 * counts[0] / 2


@pytest.mark.parametrize("dist,params,mean,std", [
    ("normal", [0.5, 0.1], 0.5, 0.1), ("beta", [2.0, 6.0], 0.25, None),
    ("uniform", [0.2, 0.4], 0.3, 0.2 / np.sqrt(12)), ("fixed", [0.7], 0.7, 0.0),
])
def test_difficulty_distributions(dist, params, mean, std):
    s = sample_difficulty(PlanConfig(difficulty=dist, difficulty_params=params), 20000, np.random.default_rng(1))
    assert s.dtype == np.float32 and s.min() >= 0 and s.max() <= 1
    assert abs(s.mean() - mean) < 0.01
    if std is not None:
        assert abs(s.std() - std) < 0.01


def test_empirical_difficulty_resamples_the_real_values():
    real = np.array([0.1, 0.2, 0.9])
    s = sample_difficulty(PlanConfig(difficulty="empirical", difficulty_params=[]), 300, np.random.default_rng(0), real)
    assert set(np.round(s.astype(np.float64), 4).tolist()) == {0.1, 0.2, 0.9}
    with pytest.raises(ValueError, match="empirical"):
        sample_difficulty(PlanConfig(difficulty="empirical", difficulty_params=[]), 3, np.random.default_rng(0), None)


def test_text_plan_is_deterministic_and_conditioned_only_for_the_difficulty_model():
    train = train_table()
    plan = PlanConfig(name="d", model="difficulty", ratio=0.2, difficulty="uniform", difficulty_params=[0, 1])
    a = build_plan(plan, train, NAMES, [3], "a photo of {name}", run_seed=0)
    b = build_plan(plan, train, NAMES, [3], "a photo of {name}", run_seed=0)
    c = build_plan(plan, train, NAMES, [3], "a photo of {name}", run_seed=1)
    assert a.equals(b)
    assert len(a) == 14 and len(set(a["sample_id"].to_pylist())) == 14
    assert not set(a["sample_id"].to_pylist()) & set(c["sample_id"].to_pylist())
    assert a["prompt"].to_pylist()[0] == "a photo of c0"
    s = np.array(a["requested_difficulty"].to_pylist())
    assert s.min() >= 0 and s.max() <= 1 and len(set(s)) > 10
    assert a["guidance"].null_count == 14 and a["source_id"].null_count == 14
    plain = build_plan(PlanConfig(name="p", model="plain", ratio=0.2), train, NAMES, [3], "{name}", 0)
    assert plain["requested_difficulty"].null_count == len(plain) == 14


def test_discl_plan_crosses_sources_levels_and_seeds():
    train = train_table()
    plan = PlanConfig(name="x", model="plain", kind="discl", sources="tail", guidance_levels=[0.2, 0.8],
                      seeds_per_source=3)
    rows = build_plan(plan, train, NAMES, [2, 3], "{name}", 0)
    assert len(rows) == (8 + 2) * 2 * 3
    assert set(rows["label"].to_pylist()) == {2, 3}
    assert sorted(set(rows["guidance"].to_pylist())) == pytest.approx([0.2, 0.8])
    ids = train["sample_id"].to_pylist()
    for sid, img in zip(rows["source_id"].to_pylist(), rows["source_image"].to_pylist()):
        assert img == train["image"][ids.index(sid)].as_py()  # each row carries its source's bytes
    assert len(set(rows["seed"].to_pylist())) == len(rows)


def test_discl_sources_by_top_k_and_threshold():
    train = train_table()
    difficulty = train["difficulty"].to_numpy()
    top = choose_sources(PlanConfig(kind="discl", sources="top_k", source_k=5), train, [])
    assert sorted(difficulty[top]) == sorted(np.sort(difficulty)[-5:])
    over = choose_sources(PlanConfig(kind="discl", sources="threshold", source_threshold=0.8), train, [])
    assert len(over) == int((difficulty >= 0.8).sum()) and (difficulty[over] >= 0.8).all()


def test_prompts_from_a_file_and_from_captions(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("\n".join(f"{n}: [{n} drawn in ink, a blurry {n}]" for n in NAMES))
    rows = build_plan(PlanConfig(name="f", model="plain", ratio=1.0, prompts=f"file:{path}"), train_table(),
                      NAMES, [], "{name}", 0)
    for label, prompt in zip(rows["label"].to_pylist(), rows["prompt"].to_pylist()):
        assert prompt in (f"c{label} drawn in ink", f"a blurry c{label}")
    assert len(set(rows["prompt"].to_pylist())) == 8
    captions = build_plan(PlanConfig(name="k", model="plain", kind="discl", sources="tail", seeds_per_source=1,
                                     guidance_levels=[0.5], prompts="caption"), train_table(True), NAMES, [3], "{name}", 0)
    assert all(p.startswith("caption ") for p in captions["prompt"].to_pylist())
    with pytest.raises(ValueError, match="caption"):
        build_plan(PlanConfig(name="k", model="plain", prompts="caption"), train_table(), NAMES, [], "{name}", 0)


def test_bad_plans_are_config_errors():
    with pytest.raises(ConfigError, match="difficulty normal takes 2"):
        load_config(None, ["synthesis.plans=[{name: a, difficulty: normal, difficulty_params: [0.5]}]"])
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(None, ["synthesis.plans=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigError, match="prompts file not found"):
        load_config(None, ["synthesis.plans=[{name: a, prompts: 'file:/nonexistent.yaml'}]"])
    with pytest.raises(ConfigError, match="min_actors"):
        load_config(None, ["synthesis.min_actors=0"])


@pytest.mark.parametrize("template,caption,expected", [
    (REAL_FAKE, "a red fox in snow", "photo of seven, a red fox in snow, best quality"),
    (REAL_FAKE, None, "photo of seven, best quality"),
    (REAL_FAKE, "", "photo of seven, best quality"),
    (REAL_FAKE, "  ", "photo of seven, best quality"),
    ("{name}, {caption}", None, "seven"),
    ("{name} {caption}", None, "seven"),
    ("{name} {caption}", "on grass", "seven on grass"),
    ("{caption} {name}", None, "seven"),
    ("a photo of the digit {name}", "ignored", "a photo of the digit seven"),
    ("a photo of the digit {name}", None, "a photo of the digit seven"),
])
def test_fill_prompt_drops_a_missing_caption_and_its_comma(template, caption, expected):
    assert fill_prompt(template, "seven", caption) == expected


def test_a_prompt_template_may_use_the_caption_and_nothing_else():
    assert check_prompt_template(REAL_FAKE) == []
    assert check_prompt_template("{caption!r} {name}") == []
    (problem,) = check_prompt_template("{name}, {caption}, {style}")
    assert "placeholder(s) {style}: only {name} (the class name) and {caption}" in problem
    assert check_prompt_template("{caption}") == ["generator.prompt_template must contain {name} (the class name), "
                                                  "got '{caption}'"]


def test_a_discl_plan_puts_each_source_caption_in_its_prompts():
    captions = class_captions()
    train = train_table(captions=captions)
    plan = PlanConfig(name="g", model="plain", kind="discl", sources="tail", guidance_levels=[0.3, 0.7],
                      seeds_per_source=2)
    rows = build_plan(plan, train, NAMES, [2], REAL_FAKE, 0)
    by_id = dict(zip(train["sample_id"].to_pylist(), captions))
    assert len(rows) == 8 * 2 * 2
    for sid, label, prompt in zip(rows["source_id"].to_pylist(), rows["label"].to_pylist(),
                                  rows["prompt"].to_pylist()):
        assert prompt == f"photo of c{label}, {by_id[sid]}, best quality"
    uncaptioned = build_plan(plan, train, NAMES, [3], REAL_FAKE, 0)  # class c3's sources have no caption
    assert set(uncaptioned["prompt"].to_pylist()) == {"photo of c3, best quality"}
    older = build_plan(plan, train_table(with_prompts=True), NAMES, [3], REAL_FAKE, 0)  # captions in `prompt`
    assert set(older["prompt"].to_pylist()) == {f"photo of c3, caption {i}, best quality" for i in (68, 69)}


def test_a_text_plan_draws_captions_of_the_rows_own_class():
    captions = class_captions()
    train = train_table(captions=captions)
    rows = build_plan(PlanConfig(name="t", model="plain", ratio=1.0), train, NAMES, [], "{name}, {caption}", 0)
    assert len(rows) == 70
    drawn = {}
    for label, prompt in zip(rows["label"].to_pylist(), rows["prompt"].to_pylist()):
        if label == 3:
            assert prompt == "c3"  # no caption of its class: the field and its comma are dropped
            continue
        name, caption = prompt.split(", ")
        assert name == f"c{label}" and caption in captions and caption.startswith(f"c{label} thing ")
        drawn.setdefault(label, set()).add(caption)
    assert all(len(drawn[label]) > 5 for label in (0, 1, 2))  # drawn, not one caption repeated
    again = build_plan(PlanConfig(name="t", model="plain", ratio=1.0), train, NAMES, [], "{name}, {caption}", 0)
    assert again.equals(rows)
    plain = build_plan(PlanConfig(name="t", model="plain", ratio=1.0), train, NAMES, [], "a photo of {name}", 0)
    assert set(plain["prompt"].to_pylist()) == {f"a photo of c{i}" for i in range(4)}


def test_a_plan_negative_prompt_overrides_the_generators():
    train = train_table()
    own = build_plan(PlanConfig(name="n", model="plain", ratio=0.2, negative_prompt="blurry, low quality"), train,
                     NAMES, [], "{name}", 0, negative_prompt="ugly")
    assert set(own["negative_prompt"].to_pylist()) == {"blurry, low quality"} and len(own) == 14
    generators = build_plan(PlanConfig(name="n", model="plain", ratio=0.2), train, NAMES, [], "{name}", 0,
                            negative_prompt="ugly")
    assert set(generators["negative_prompt"].to_pylist()) == {"ugly"}
    none = build_plan(PlanConfig(name="n", model="plain", ratio=0.2), train, NAMES, [], "{name}", 0)
    assert none["negative_prompt"].null_count == len(none)
    assert own["sample_id"].equals(generators["sample_id"])  # the version folder (the plan's digest) tells them apart


def test_cut_prompts_counts_the_prompts_longer_than_the_text_encoders_window(tmp_path):
    tokenizer = make_clip_tokenizer(str(tmp_path / "tok"), "a photo of cat dog".split(), model_max_length=8)
    short, exact, long = "a photo of cat", "a photo of cat dog cat", "a photo of cat dog cat dog"
    assert [len(tokenizer(p).input_ids) for p in (short, exact, long)] == [6, 8, 9]  # BOS and EOS included
    assert cut_prompts(tokenizer, [short] * 3 + [exact] * 2 + [long] * 4 + ["photo of a dog, " * 3]) == 5
    assert cut_prompts(tokenizer, [short, exact]) == 0
    assert cut_prompts(tokenizer, []) == 0


def test_prompt_tokenizer_is_the_one_the_unet_is_conditioned_through(tmp_path):
    make_clip_tokenizer(str(tmp_path / "sd" / "tokenizer"), ["one"], model_max_length=12)
    (tmp_path / "sd" / "model_index.json").write_text(
        '{"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}')
    make_clip_tokenizer(str(tmp_path / "refiner" / "tokenizer_2"), ["two"], model_max_length=20)
    (tmp_path / "refiner" / "model_index.json").write_text(
        '{"text_encoder": [null, null], "tokenizer": [null, null], "text_encoder_2": '
        '["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"]}')
    sd, refiner = prompt_tokenizer(str(tmp_path / "sd")), prompt_tokenizer(str(tmp_path / "refiner"))
    assert isinstance(sd, CLIPTokenizer) and (sd.model_max_length, refiner.model_max_length) == (12, 20)
