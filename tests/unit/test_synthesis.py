"""The synthesis actors called directly (no Ray): generate, CLIP filter, re-score and write,
exactly-once parts, and the image-folder export."""

import csv
import io
import os
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from raysys.core.config import SamplingConfig, PlanConfig
from raysys.generation.components import ComponentSpec, build_components
from raysys.generation.difficulty_encoder import DifficultyEncoder
from raysys.generation.plans import build_plan
from raysys.generation.synthesis import (
    ClipFilter,
    GenerateBatch,
    GeneratorSpec,
    RescoreAndWrite,
    list_parts,
    read_plan,
    remove_duplicates,
    write_part,
    written_ids,
)
from raysys.generation.tokenizer import make_clip_tokenizer
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.stages import load_config
from tests.conftest import TINY
from tests.unit.test_plans import NAMES, train_table
from tests.unit.test_storage import memory_uris  # noqa: F401  (fixture)

WORDS = "a photo of c0 c1 c2 c3".split()
SAMPLING = SamplingConfig(guidance_scale=2.0, num_inference_steps=3)


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    torch.manual_seed(0)
    pipe = build_components(ComponentSpec(image_size=16, block_out_channels=[16, 32], cross_attention_dim=32,
                                          attention_head_dim=8, vocabulary=WORDS))
    pipe.register_modules(difficulty_encoder=DifficultyEncoder(num_classes=4, cross_attention_dim=32, num_tokens=2,
                                                               hidden_dim=32))
    directory = str(tmp_path_factory.mktemp("gen") / "pipe")
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = str(tmp_path_factory.mktemp("clf") / "m")
    save_classifier(create_classifier("small_cnn", 4, 1, width=8), directory,
                    {"name": "small_cnn", "num_classes": 4, "in_chans": 1, "width": 8, "image_size": 8})
    return directory


def plan_rows(kind: str = "text") -> pa.Table:
    if kind == "text":
        plan = PlanConfig(name="t", model="difficulty", ratio=0.15, difficulty="uniform", difficulty_params=[0, 1])
    else:
        plan = PlanConfig(name="g", model="difficulty", kind="discl", sources="tail", guidance_levels=[0.5],
                          seeds_per_source=1, difficulty="fixed", difficulty_params=[0.5])
    return build_plan(plan, train_table(), NAMES, [3], "a photo of {name}", run_seed=0)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def test_generate_batch_is_per_row_deterministic_and_encodes_png_or_webp(generator_dir):
    rows = plan_rows()
    gen = GenerateBatch({"difficulty": GeneratorSpec(generator_dir, label="tiny")}, SAMPLING)
    out = gen(rows)
    assert len(out) == len(rows) == 10
    assert out["sample_id"].to_pylist() == rows["sample_id"].to_pylist()
    assert set(out["generator"].to_pylist()) == {"tiny"}
    first = [decode(b) for b in out["image"].to_pylist()]
    assert first[0].shape == (16, 16)
    assert len({im.tobytes() for im in first}) == len(first)  # different seeds, different images
    again = gen(rows.slice(3, 2))  # the same rows in another batch: the same images
    assert [decode(b).tobytes() for b in again["image"].to_pylist()] == [im.tobytes() for im in first[3:5]]
    webp = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING, image_format="webp")(rows.slice(0, 2))
    assert webp["image"][0].as_py()[8:12] == b"WEBP"
    assert decode(webp["image"][0].as_py()).tobytes() == first[0].tobytes()  # lossless
    assert out["busy_s"].to_numpy().sum() > 0 and len(set(out["actor_id"].to_pylist())) == 1


def test_generate_batch_runs_the_generator_in_its_dtype(generator_dir):
    rows = plan_rows().slice(0, 3)
    gen = GenerateBatch({"difficulty": GeneratorSpec(generator_dir, dtype="bfloat16")}, SAMPLING)
    half = gen(rows)
    pipe = gen.pipeline("difficulty")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    full = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING)(rows)
    assert GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING).pipeline("difficulty").unet.dtype \
        == torch.float32
    diffs = [np.abs(decode(a).astype(int) - decode(b).astype(int)) for a, b in
             zip(half["image"].to_pylist(), full["image"].to_pylist())]
    assert all(d.max() > 0 for d in diffs)  # computed in bf16 ...
    assert np.mean([d.mean() for d in diffs]) < 16  # ... but the same images, up to its precision


def test_float16_generation_needs_gpus():
    from raysys.core.loading import ConfigError

    with pytest.raises(ConfigError, match=r"generator.dtype=float16 needs GPUs \(synthesis.num_gpus > 0\)"):
        load_config(TINY, ["generator.dtype=float16"])
    assert load_config(TINY, ["generator.dtype=float16", "synthesis.num_gpus=1"]).generator.dtype == "float16"
    assert load_config(TINY, ["generator.dtype=bfloat16"]).generator.dtype == "bfloat16"


def test_image_guided_rows_use_their_source(generator_dir):
    rows = plan_rows("discl")
    assert len(rows) == 2 and set(rows["guidance"].to_pylist()) == {0.5}
    gen = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING)
    guided = gen(rows)
    unguided = gen(rows.set_column(rows.schema.get_field_index("guidance"), "guidance",
                                   pa.array([None, None], pa.float32())))
    for a, b in zip(guided["image"].to_pylist(), unguided["image"].to_pylist()):
        assert decode(a).tobytes() != decode(b).tobytes()


def test_each_row_is_guided_away_from_its_own_negative_prompt(generator_dir):
    rows = plan_rows().slice(0, 4)
    column = rows.schema.get_field_index("negative_prompt")

    def with_negatives(values):
        return rows.set_column(column, "negative_prompt", pa.array(values, pa.string()))

    gen = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, replace(SAMPLING, negative_prompt="c3"))
    images = [[decode(b).tobytes() for b in gen(table)["image"].to_pylist()]
              for table in (rows, with_negatives(["c3"] * 4), with_negatives(["c3", "c2", "c3", "c1"]))]
    assert rows["negative_prompt"].null_count == 4
    assert images[0] == images[1]  # a null: the sampling config's negative prompt
    assert [a == b for a, b in zip(images[1], images[2])] == [True, False, True, False]


def test_rescore_and_write_records_measured_difficulty_and_filters(generator_dir, classifier_dir, tmp_path):
    generated = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING)(plan_rows())
    out = str(tmp_path / "synth")
    summary = RescoreAndWrite(classifier_dir, out, classifier_min_p=0.0)(generated)
    assert summary["keep"].to_pylist() == [True] * 10
    written = read_plan(os.path.join(out, "t"))
    assert len(written) == 10 and set(written["origin"].to_pylist()) == {"synthetic"}
    d = written["difficulty"].to_numpy()
    assert ((d >= 0) & (d <= 1)).all()
    p = written["p_true"].to_numpy()
    assert np.allclose(d, 1 - p, atol=1e-6)
    assert written["requested_difficulty"].null_count == 0 and written["seed"].null_count == 0
    # A threshold above some p rejects exactly those rows; rejected rows are written without bytes.
    threshold = float(np.median(p))
    strict = RescoreAndWrite(classifier_dir, str(tmp_path / "strict"), classifier_min_p=threshold)(generated)
    all_rows = read_plan(str(tmp_path / "strict" / "t"), kept_only=False)
    keep = all_rows["keep"].to_numpy(zero_copy_only=False)
    assert keep.sum() == (p >= threshold).sum() == sum(strict["keep"].to_pylist())
    assert all_rows.filter(pa.array(~keep))["image"].null_count == int((~keep).sum())


def test_parts_are_named_by_their_ids_and_duplicates_are_removed(tmp_path):
    from raysys.core.schema import to_table

    def rows(ids):
        return to_table({"sample_id": ids, "label": [0] * len(ids), "class_name": ["c0"] * len(ids),
                         "split": ["train"] * len(ids), "origin": ["synthetic"] * len(ids), "keep": [True] * len(ids)})

    d = str(tmp_path / "plan")
    first = write_part(rows(["a", "b", "c"]), d)
    assert write_part(rows(["c", "b", "a"]), d) == first  # same ids, same part: a retry overwrites
    write_part(rows(["c", "d"]), d)  # a retry cut differently
    assert written_ids(d) == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert remove_duplicates(d) == 1
    assert written_ids(d) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert remove_duplicates(d) == 0 and len(list_parts(d)) == 2
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "part-x.parquet.tmp-1234"), "wb").write(b"partial")  # a crashed write
    assert len(list_parts(d)) == 2


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = str(tmp_path_factory.mktemp("clip"))
    tokenizer = make_clip_tokenizer(directory, WORDS, model_max_length=16)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                                 crop_size={"height": 16, "width": 16}),
                              tokenizer=tokenizer)
    processor.save_pretrained(directory)
    return directory


def test_clip_filter_scores_text_and_source_similarity(generator_dir, tiny_clip):
    gen = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING)
    rows = pa.concat_tables([gen(plan_rows()), gen(plan_rows("discl"))])
    everything = ClipFilter(tiny_clip, text_threshold=-1.0, image_threshold=-1.0)(rows)
    text = everything["clip_text"].to_numpy()
    assert ((text >= -1) & (text <= 1)).all() and len(set(np.round(text, 6))) > 1
    assert everything["clip_image"].null_count == 10  # only the 2 image-guided rows have a source
    assert all(everything["keep"].to_pylist())
    cut = float(np.median(text))
    some = ClipFilter(tiny_clip, text_threshold=cut, image_threshold=-1.0)(rows)
    assert some["keep"].to_pylist() == (text >= cut).tolist()
    none = ClipFilter(tiny_clip, text_threshold=-1.0, image_threshold=1.01)(rows)
    assert none["keep"].to_pylist() == [True] * 10 + [False] * 2


def test_clip_filter_opens_images_as_decode_does(tiny_clip):
    """The CLIP filter opens images through images.open_image: a transparent red RGBA image is seen as
    white (it was seen as red), a 16-bit gray one as its 8-bit gray (it was seen as white)."""
    import io

    from PIL import Image

    def png(array, mode=None) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array, mode).save(buf, format="PNG")
        return buf.getvalue()

    clear_red, red = np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 3), np.uint8)
    clear_red[..., 0] = red[..., 0] = 255  # clear_red: red, all transparent
    white = np.full((16, 16, 3), 255, np.uint8)
    gray16, gray8 = np.full((16, 16), 100 * 257, np.uint16), np.full((16, 16, 3), 100, np.uint8)
    feats = ClipFilter(tiny_clip, 0.0, 0.0)._features([png(clear_red, "RGBA"), png(white), png(red),
                                                        png(gray16), png(gray8), png(white)]).detach().numpy()
    assert np.allclose(feats[0], feats[1], atol=1e-5) and not np.allclose(feats[0], feats[2], atol=1e-2)
    assert np.allclose(feats[3], feats[4], atol=1e-5) and not np.allclose(feats[3], feats[5], atol=1e-2)


def test_missing_clip_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip_model"):
        ClipFilter(str(tmp_path / "no-such-clip"), 0.25, 0.0)


def test_an_unusable_clip_model_is_refused_before_the_actors_start(tiny_clip, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from raysys.core.loading import ConfigError

    # Offline, as the CI machine is in effect: the hub's client answers at once instead of
    # spending about 20 s on timeouts and retries, and the error is the same one.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from raysys.generation.synthesis import check_clip_model

    check_clip_model(tiny_clip)  # a local CLIP model: fine
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="synthesis.filter.clip_model '.*empty' is a directory without config.json"):
        check_clip_model(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="'no-such-org/no-such-clip': no such local directory, and not reachable"):
        check_clip_model("no-such-org/no-such-clip")


def test_export_writes_an_image_folder_with_labels(generator_dir, classifier_dir, tmp_path):
    from raysys.cli import main

    generated = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING)(plan_rows())
    RescoreAndWrite(classifier_dir, str(tmp_path / "s"))(generated)
    out = tmp_path / "folder"
    assert main(["export", str(tmp_path / "s" / "t"), str(out)]) == 0
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    for row in rows:
        assert row["file"].startswith(row["class_name"] + "/") and (out / row["file"]).is_file()
        assert decode((out / row["file"]).read_bytes()).shape == (16, 16)
    assert main(["export", str(tmp_path / "nothing"), str(out)]) == 2


def test_parts_go_to_any_pyarrow_filesystem(generator_dir, classifier_dir, memory_uris, tmp_path):
    """The same writes, reads, duplicate repair and export through a non-local filesystem."""
    from raysys.data.export import export_images

    base, memory = memory_uris
    generated = GenerateBatch({"difficulty": GeneratorSpec(generator_dir)}, SAMPLING)(plan_rows())
    summary = RescoreAndWrite(classifier_dir, f"{base}/synth")(generated)
    assert all(p.startswith(f"{base}/synth/t/part-") for p in summary["part"].to_pylist())
    directory = f"{base}/synth/t"
    write_part(read_plan(directory).slice(0, 3), directory)  # a retry cut differently
    assert sum(written_ids(directory).values()) == 13
    assert remove_duplicates(directory) == 3 and set(written_ids(directory).values()) == {1}
    assert len(read_plan(directory)) == 10
    assert export_images(directory, str(tmp_path / "folder")) == 10
    assert not list(tmp_path.glob("memory*"))  # nothing written locally under the scheme's name
