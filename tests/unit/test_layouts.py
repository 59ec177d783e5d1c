"""The released Stable Diffusion layouts' configs (no weights: built on the meta device)."""

from __future__ import annotations

import pytest

from raysys.generation.layouts import LAYOUTS, components, get_layout, model_index, parameter_counts

# Parameter counts of the released models' components (what their weight files hold).
RELEASED_PARAMETERS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480, "safety_checker": 303_981_588},
    "sd21-base": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl-refiner": {"unet": 2_259_526_660, "vae": 83_653_863, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_build_the_released_models_sizes(layout):
    assert parameter_counts(layout) == RELEASED_PARAMETERS[layout]


def test_layouts_name_the_released_pipelines_and_components():
    assert model_index("sd15")["_class_name"] == "StableDiffusionPipeline"
    assert model_index("sdxl-refiner")["_class_name"] == "StableDiffusionXLImg2ImgPipeline"
    assert set(components("sd15")) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker",
                                       "feature_extractor"}
    assert set(components("sd21-base")) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                            "feature_extractor"}
    # The refiner has only the second (OpenCLIP bigG) text encoder.
    assert set(components("sdxl-refiner")) == {"unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler"}
    assert components("sdxl-refiner")["text_encoder_2"] == ("transformers", "CLIPTextModelWithProjection")
    assert [get_layout(n).pad_token for n in LAYOUTS] == ["<|endoftext|>", "!", "!"]
    with pytest.raises(ValueError, match="sd15, sd21-base, sdxl-refiner"):
        get_layout("sd3")
