"""The memory plan (raysys.generation.memory): weights from parameter counts, the activation
profile's use, batch_size auto, the fit check's message, and the live-bytes meter itself."""

from __future__ import annotations

import pytest
import torch

from raysys.generation import memory, memory_checks, memory_table
from raysys.generation.layouts import LAYOUTS
from raysys.generation.memory import (
    activation_bytes,
    check_fits,
    largest_batch,
    predict_finetune,
    predict_generation,
    weight_bytes,
)
from raysys.generation.memory_profiler import LiveTensorBytes, measure
from raysys.generation.memory_table import GPUS, GiB

from tests.unit.test_layouts import RELEASED_PARAMETERS


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weights_are_parameter_counts_times_dtype_size(layout):
    assert memory_table.PROFILES[layout]["params"] == RELEASED_PARAMETERS[layout]
    loaded = sum(n for folder, n in RELEASED_PARAMETERS[layout].items() if folder != "safety_checker")
    for dtype, size in (("fp32", 4), ("fp16", 2), ("bf16", 2), (torch.bfloat16, 2), (torch.float32, 4)):
        assert weight_bytes(layout, dtype) == loaded * size
    encoder = memory_table.DIFFICULTY_ENCODER_PARAMS[memory_table.PROFILES[layout]["cross_attention_dim"]]
    assert predict_generation(layout, 512, 1, "bf16").weights == (loaded + encoder) * 2
    # float16: the VAE runs in float32 (force_upcast), its weights and its phases
    vae = RELEASED_PARAMETERS[layout]["vae"]
    half = predict_generation(layout, 512, 2, "fp16", img2img=True)
    bf16 = predict_generation(layout, 512, 2, "bf16", img2img=True)
    assert half.weights == (loaded - vae + encoder) * 2 + vae * 4
    assert half.parts["vae_decode"] == pytest.approx(2 * bf16.parts["vae_decode"], rel=1e-6)
    assert half.parts["vae_encode"] == pytest.approx(2 * bf16.parts["vae_encode"], rel=1e-6)
    assert half.parts["unet"] == bf16.parts["unet"]
    tune = predict_finetune(layout, 512, 1, "bf16", lora_rank=8, weight_dtype="fp32")
    assert tune.weights == loaded * 4
    # LoRA + encoder in float32 with gradients and AdamW's two states: 16 bytes a parameter.
    assert tune.trainable == 16 * (8 * memory_table.PROFILES[layout]["lora_per_rank"] + encoder)


def test_difficulty_encoder_parameters_are_the_encoders():
    from raysys.generation.difficulty_encoder import DifficultyEncoder

    for width, n in memory_table.DIFFICULTY_ENCODER_PARAMS.items():
        with torch.device("meta"):
            encoder = DifficultyEncoder(num_classes=1000, cross_attention_dim=width)
        assert sum(p.numel() for p in encoder.parameters()) == n


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_prediction_grows_with_batch_and_resolution(layout):
    for kind in (predict_generation, predict_finetune):
        by_batch = [kind(layout, 512, b, "fp16").total for b in (1, 2, 4, 8, 16)]
        assert by_batch == sorted(by_batch) and len(set(by_batch)) == 5
        by_size = [kind(layout, px, 4, "fp16").total for px in (256, 512, 768, 1024)]
        assert by_size == sorted(by_size) and len(set(by_size)) == 4
    assert predict_generation(layout, 512, 4, "fp32").total > predict_generation(layout, 512, 4, "fp16").total
    # Checkpointing trades compute for memory.
    assert (predict_finetune(layout, 512, 4, "bf16", gradient_checkpointing=False).activations
            > 2 * predict_finetune(layout, 512, 4, "bf16", gradient_checkpointing=True).activations)


def test_guidance_doubles_the_unet_rows():
    with_cfg = predict_generation("sd15", 512, 4, "fp16", guidance=True).parts
    without = predict_generation("sd15", 512, 4, "fp16", guidance=False).parts
    assert with_cfg["unet"] == pytest.approx(2 * without["unet"], abs=2)
    assert with_cfg["unet"] == activation_bytes("sd15", "unet", 512, 8, "fp16")
    assert with_cfg["vae_decode"] == without["vae_decode"]  # the decode sees the batch once


@pytest.mark.parametrize("layout,px", [("sd15", 512), ("sd21-base", 512), ("sdxl-refiner", 1024)])
@pytest.mark.parametrize("gpu", ["A10G", "A100-40", "H100"])
def test_largest_batch_fits_and_one_more_does_not(layout, px, gpu):
    budget = GPUS[gpu] * GiB * (1 - memory_table.HEADROOM)
    for kind, predict in (("generation", predict_generation), ("finetune", predict_finetune)):
        b = largest_batch(layout, px, "fp16", gpu, kind=kind)
        assert b >= 1
        assert predict(layout, px, b, "fp16").total <= budget < predict(layout, px, b + 1, "fp16").total
        assert check_fits(layout, px, b, "fp16", gpu, kind=kind) == []
        assert len(check_fits(layout, px, b + 1, "fp16", gpu, kind=kind)) == 1


def test_largest_batch_is_zero_when_nothing_fits():
    assert largest_batch("sdxl-refiner", 1024, "fp32", 4 * GiB) == 0
    assert largest_batch("sd15", 512, "fp16", 1000 * GiB, limit=64) == 64


def test_check_fits_names_the_key_the_prediction_and_what_fits():
    best = largest_batch("sd15", 512, "fp16", "A10G")
    [problem] = check_fits("sd15", 512, best + 1, "fp16", "A10G")
    assert problem.startswith(f"synthesis.batch_size={best + 1} needs ")
    assert "GiB predicted on a 24 GiB GPU (A10G)" in problem
    assert f"batch_size <= {best} fits" in problem
    # float32: half precision is offered when it would fit the batch.
    fp32 = largest_batch("sd15", 512, "fp32", "A10G")
    [problem] = check_fits("sd15", 512, fp32 + 1, "fp32", "A10G")
    half = largest_batch("sd15", 512, "bf16", "A10G")
    assert f"batch_size <= {fp32} fits, or use dtype bf16 (batch_size <= {half} fits then)" in problem
    # Fine-tuning names its own key; nothing fits: a bigger GPU is named.
    [problem] = check_fits("sdxl-refiner", 1024, 1, "fp32", 8 * GiB, kind="finetune", key="finetune.batch_size")
    assert problem.startswith("finetune.batch_size=1 needs ") and "on a 8 GiB GPU" in problem
    assert "batch_size <=" not in problem.split("; ")[1].split("(")[0]  # batch 1 does not fit in fp32
    assert "use dtype bf16" in problem or "not even batch_size 1 fits" in problem
    with pytest.raises(ValueError, match="unknown GPU 'V100'"):
        check_fits("sd15", 512, 1, "fp16", "V100")
    with pytest.raises(ValueError, match="unknown dtype"):
        predict_generation("sd15", 512, 1, "int8")


def test_describe_is_one_line_with_the_total():
    est = predict_generation("sd15", 512, 8, "fp16")
    line = est.describe()
    assert "\n" not in line and f"{est.total / GiB:.1f} GiB" in line and "weights" in line
    assert est.total == est.weights + est.activations + est.runtime + est.trainable


def test_live_tensor_bytes_counts_new_tensors_not_weights_or_views():
    weight = torch.randn(256, 256)  # made before: not counted, nor its views
    x = torch.randn(8, 256)
    meter = LiveTensorBytes()
    with meter:
        y = x @ weight.t()  # 8 KiB
        z = torch.relu(y)  # 8 KiB more
        z.add_(1)  # in place: nothing new
        big = torch.zeros(1024, 1024)  # 4 MiB
        del big
        w = y[:4]  # a view: nothing new
    assert meter.peak == 2 * 8 * 256 * 4 + 4 * 2**20
    assert meter.live == 2 * 8 * 256 * 4
    del w


def test_live_tensor_bytes_sees_the_backward_pass():
    layer = torch.nn.Linear(512, 512)
    x = torch.randn(64, 512)
    peak = measure(lambda: layer(x).square().sum().backward())
    # The backward's weight gradient (1 MiB) beside at least one (64, 512) activation (128 KiB).
    assert 512 * 512 * 4 + 64 * 512 * 4 <= peak <= 512 * 512 * 4 + 4 * 64 * 512 * 4 + 4096


def test_layout_of_a_pipeline_folder(tmp_path):
    import json
    import os
    import shutil

    from raysys.generation.layouts import CONFIG_ROOT

    for name in LAYOUTS:
        assert memory_checks.layout_of(os.path.join(CONFIG_ROOT, name)) == name
    assert memory_checks.layout_of(str(tmp_path)) is None  # no unet/config.json: e.g. the built-in generator
    shutil.copytree(os.path.join(CONFIG_ROOT, "sd15", "unet"), tmp_path / "unet")
    assert memory_checks.layout_of(str(tmp_path)) == "sd15"
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 512  # another architecture
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    assert memory_checks.layout_of(str(tmp_path)) is None


# ---- the config checks before any work, and synthesis.batch_size: auto -------------------------

@pytest.fixture(scope="module")
def sd21_configs(tmp_path_factory):
    """A folder with SD 2.1 base's model_index.json and component configs (no weights): enough for
    generator.base's check and for the memory plan to know the layout."""
    import shutil

    from raysys.generation.layouts import CONFIG_ROOT

    folder = tmp_path_factory.mktemp("sd21") / "base"
    shutil.copytree(f"{CONFIG_ROOT}/sd21-base", folder)
    return str(folder)


def gpu_config(base, *overrides):
    from raysys.stages import load_config
    from tests.conftest import TINY

    return load_config(TINY, [f"generator.base={base}", "synthesis.num_gpus=1", "synthesis.gpu=A10G",
                              "generator.dtype=float16", *overrides])


def test_auto_batch_size_is_the_largest_that_fits_the_gpu(sd21_configs):
    from raysys.generation.memory_checks import generation_batch_size

    cfg = gpu_config(sd21_configs, "synthesis.batch_size=auto")
    n = generation_batch_size(cfg)
    assert n > 8  # SD 2.1 at 512 px in fp16 on 24 GiB
    args = memory_checks._generation_args(cfg, "sd21-base")
    assert args["branches"] == 2 and args["dtype"] == "float16"  # tiny.yaml guides with scale 2
    for batch, fits in ((n, True), (n + 1, False)):
        assert (memory.check_fits("sd21-base", None, batch, "float16", "A10G", branches=2,
                                  img2img=args["img2img"]) == []) == fits
    shared = gpu_config(sd21_configs, "synthesis.batch_size=auto", "synthesis.num_gpus=0.5")
    assert 0 < generation_batch_size(shared) < n  # half a GPU per actor: half its memory
    bf32 = gpu_config(sd21_configs, "synthesis.batch_size=auto", "generator.dtype=float32")
    assert 0 < generation_batch_size(bf32) < n


def test_a_batch_that_cannot_fit_is_refused_before_any_work(sd21_configs):
    from raysys.core.loading import ConfigError
    from raysys.generation.memory_checks import generation_batch_size

    fits = generation_batch_size(gpu_config(sd21_configs, "synthesis.batch_size=auto"))
    with pytest.raises(ConfigError, match=rf"synthesis.batch_size={fits + 1} needs .* GiB predicted on a 24 GiB "
                                          rf"GPU \(A10G\).*batch_size <= {fits} fits"):
        gpu_config(sd21_configs, f"synthesis.batch_size={fits + 1}")
    assert gpu_config(sd21_configs, f"synthesis.batch_size={fits}").synthesis.batch_size == fits
    with pytest.raises(ConfigError, match="synthesis.gpu 'V100' is not a GPU the memory plan knows"):
        gpu_config(sd21_configs, "synthesis.gpu=V100")
    with pytest.raises(ConfigError, match="synthesis.batch_size=auto needs synthesis.gpu"):
        gpu_config(sd21_configs, "synthesis.batch_size=auto", "synthesis.num_gpus=0")
    with pytest.raises(ConfigError, match=r"finetune.batch_size=512 needs .* on a 24 GiB GPU \(A10G\)"):
        gpu_config(sd21_configs, "finetune.use_gpu=true", "finetune.gpu=A10G", "finetune.batch_size=512")
    assert gpu_config(sd21_configs, "finetune.use_gpu=true", "finetune.gpu=A10G",
                      "finetune.batch_size=8").finetune.batch_size == 8


def test_the_layout_of_a_hub_id_or_a_folder():
    assert memory_checks.layout_of("stabilityai/stable-diffusion-2-1-base") == "sd21-base"
    assert memory_checks.layout_of("runwayml/stable-diffusion-v1-5") == "sd15"  # the old name of the same repository
    assert memory_checks.layout_of("someone/another-model") is None
