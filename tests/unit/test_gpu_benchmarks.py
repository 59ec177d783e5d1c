"""The GPU benchmarks (benchmarks/gpu_synthesis.py, gpu_scoring.py) run here on a CPU at tiny size,
so that they cannot rot before a GPU runs them: every figure they write is checked against what it
must be (counts, rates, ratio, FLOPs by hand, MFU), and the raysys and plain paths must produce
the same images / probabilities for the same seeds. No Ray is started."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_common  # noqa: E402
import gpu_scoring  # noqa: E402
import gpu_suite  # noqa: E402
import gpu_synthesis  # noqa: E402

TINY = ["--device", "cpu", "--dtype", "fp32", "--resolution", "32", "--images", "4", "--batch-size", "2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads wait on each other whenever
    one is descheduled, and tiny runs slow down tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(module, tmp_path_factory, name: str, *args: str) -> tuple[dict, Path]:
    """main(args) with --json; the JSON file as written (and the run's folder)."""
    folder = tmp_path_factory.mktemp(name)
    module.main([*args, "--json", str(folder / "out.json")])
    return json.loads((folder / "out.json").read_text()), folder


@pytest.fixture(scope="module")
def text2(tmp_path_factory):
    out, folder = _run(gpu_synthesis, tmp_path_factory, "text2", *TINY, "--steps", "2",
                       "--save-images", str(tmp_path_factory.getbasetemp() / "text2-images"))
    return out, tmp_path_factory.getbasetemp() / "text2-images"


@pytest.fixture(scope="module")
def text4(tmp_path_factory):
    return _run(gpu_synthesis, tmp_path_factory, "text4", *TINY, "--steps", "4", "--peak-tflops", "0.002")[0]


@pytest.fixture(scope="module")
def img2img4(tmp_path_factory):
    return _run(gpu_synthesis, tmp_path_factory, "img2img", *TINY, "--steps", "4", "--mode", "img2img",
                "--strength", "0.5")[0]


@pytest.fixture(scope="module")
def scoring(tmp_path_factory):
    return _run(gpu_scoring, tmp_path_factory, "scoring", "--device", "cpu", "--dtype", "fp32", "--model", "resnet10t",
                "--num-classes", "10", "--resolution", "32", "--source-size", "40", "--images", "8",
                "--batch-size", "4", "--peak-tflops", "0.002")[0]


def _check_rates(out: dict, images: int) -> None:
    for name in ("plain", "raysys"):
        r = out["paths"][name]
        assert r["images"] == images, name
        assert r["seconds"] > 0 and r["images_per_s"] > 0
        assert r["images_per_s"] == pytest.approx(images / r["seconds"], rel=1e-12)
        assert r["peak_memory_mib"] > 0
    assert out["ratio"] == pytest.approx(out["paths"]["raysys"]["images_per_s"] / out["paths"]["plain"]["images_per_s"],
                                         rel=1e-12)


# ---- the pure parts -------------------------------------------------------------------------

def test_flop_counter_by_hand():
    """A multiply-add is 2 FLOPs; attention counts on a CPU as on a GPU (QK^T and AV)."""
    linear = torch.nn.Linear(8, 16)
    assert gpu_common.count_flops(lambda: linear(torch.randn(4, 8))) == 2 * 4 * 8 * 16
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert gpu_common.count_flops(lambda: conv(torch.randn(1, 3, 8, 8))) == 2 * 4 * 8 * 8 * 3 * 3 * 3
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert gpu_common.count_flops(lambda: sdpa(q, k, v)) == 2 * (2 * 1 * 2 * 5 * 7 * 8)


def test_mfu_and_peak_table():
    assert gpu_common.mfu(3e12, 2.0, 1e12) == pytest.approx(1.5)
    assert gpu_common.mfu(3e12, 2.0, None) is None
    assert gpu_common.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert gpu_common.peak_flops("NVIDIA H100 PCIe", "fp16") == 756e12
    assert gpu_common.peak_flops("NVIDIA H200", "fp16") == 989e12
    assert gpu_common.peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert gpu_common.peak_flops("NVIDIA A10", "bf16") == 125e12
    assert gpu_common.peak_flops("NVIDIA A10G", "bf16") is None  # not the A10: no datasheet, pass --peak-tflops
    assert gpu_common.peak_flops("Intel(R) Xeon(R)", "fp32") is None
    assert gpu_common.peak_flops("Intel(R) Xeon(R)", "fp32", 2.5) == 2.5e12


def test_unet_calls_per_batch():
    assert gpu_synthesis.unet_calls(30, "text", 0.5, "plain") == gpu_synthesis.unet_calls(30, "text", 0.5, "raysys") == 30
    for path in ("plain", "raysys"):
        assert gpu_synthesis.unet_calls(30, "img2img", 0.5, path) == 15
        assert gpu_synthesis.unet_calls(50, "img2img", 0.2, path) == 10
    # diffusers truncates steps x strength, raysys rounds steps x (1 - λ): they differ when it is not whole
    assert gpu_synthesis.unet_calls(25, "img2img", 0.3, "plain") == 7
    assert gpu_synthesis.unet_calls(25, "img2img", 0.3, "raysys") == 8


# ---- gpu_synthesis.py -----------------------------------------------------------------------

def test_synthesis_counts_rates_ratio(text2, text4, img2img4):
    for out in (text2[0], text4, img2img4):
        _check_rates(out, 4)
    out = text2[0]
    assert (out["device"], out["dtype"], out["resolution"], out["steps"], out["batch_size"]) == (
        gpu_common.device_name(torch.device("cpu")), "fp32", 32, 2, 2)
    assert out["versions"]["torch"] == torch.__version__ and "diffusers" in out["versions"]
    for name in ("plain", "raysys"):
        assert out["paths"][name]["mfu"] is None  # a CPU and no --peak-tflops


def test_synthesis_flops_by_hand(text2, text4, img2img4, tmp_path):
    forward = text2[0]["paths"]["raysys"]["unet_forward_flops"]
    assert forward > 0
    for out, calls in ((text2[0], 2), (text4, 4), (img2img4, 2)):
        assert out["cfg_branches"] == 2
        for name in ("plain", "raysys"):
            r = out["paths"][name]
            assert r["unet_forward_flops"] == forward  # the same UNet at the same shape (2 branches x 2 rows)
            assert r["unet_calls_per_batch"] == calls
            assert r["unet_flops_per_image"] == forward * calls / 2
    # twice the steps, twice the FLOPs; img2img at strength 0.5 runs half of its 4 steps
    assert text4["paths"]["raysys"]["unet_flops_per_image"] == 2 * text2[0]["paths"]["raysys"]["unet_flops_per_image"]
    assert img2img4["paths"]["plain"]["unet_flops_per_image"] == text2[0]["paths"]["plain"]["unet_flops_per_image"]
    # the benchmark's forward count, recounted from the saved tiny UNet: 4 latent rows of 16 x 16
    # (32 px / the VAE's 2x), 16 context tokens; and FLOPs are linear in the rows
    gpu_synthesis.build_generator(str(tmp_path / "gen"), "tiny", 32)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "gen", subfolder="unet")
    assert gpu_synthesis.unet_forward_flops(unet, 4, 16, 16) == forward
    assert gpu_synthesis.unet_forward_flops(unet, 2, 16, 16) * 2 == forward


def test_synthesis_mfu_with_peak(text4):
    assert text4["peak_flops"] == pytest.approx(0.002e12)
    for name in ("plain", "raysys"):
        r = text4["paths"][name]
        assert r["mfu"] == pytest.approx(r["unet_flops_per_image"] * r["images_per_s"] / 0.002e12, rel=1e-9)


def test_synthesis_same_images(text2):
    """Text mode at fp32 on a CPU: the same seeds give the same pixels on both paths (raysys draws
    each row's noise on the CPU from its own generator; the plain path is given the same per-row
    generators). Within 1 uint8 level: diffusers maps [-1, 1] to uint8 as (x/2 + 0.5) * 255,
    raysys as (x + 1) * 127.5, which may round a value on a .5 boundary the other way."""
    _, folder = text2
    plain = sorted((folder / "plain").iterdir())
    assert [p.name for p in plain] == [p.name for p in sorted((folder / "raysys").iterdir())]
    assert len(plain) == 4
    arrays = {}
    for p in plain:
        a = np.asarray(Image.open(io.BytesIO(p.read_bytes())), dtype=np.int16)
        b = np.asarray(Image.open(io.BytesIO((folder / "raysys" / p.name).read_bytes())), dtype=np.int16)
        assert a.shape == b.shape == (32, 32, 3)
        assert np.abs(a - b).max() <= 1, p.name
        arrays[p.name] = a
    first, second = list(arrays.values())[:2]
    assert np.abs(first - second).max() > 10  # other seeds, other images: the match is not trivial
    assert first.std() > 5


def test_img2img_paths(img2img4):
    assert img2img4["mode"] == "img2img" and img2img4["strength"] == 0.5
    assert img2img4["paths"]["plain"]["unet_calls_per_batch"] == img2img4["paths"]["raysys"]["unet_calls_per_batch"] == 2


# ---- gpu_scoring.py -------------------------------------------------------------------------

def test_scoring(scoring):
    _check_rates(scoring, 8)
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    one = gpu_common.count_flops(lambda: model(torch.randn(1, 3, 32, 32)))
    for name in ("plain", "raysys"):
        r = scoring["paths"][name]
        assert r["forward_flops"] == 4 * one  # a batch of 4 is 4 images' worth
        assert r["flops_per_image"] == one > 0
        assert r["mfu"] == pytest.approx(one * r["images_per_s"] / 0.002e12, rel=1e-9)
    # the same work: the same probability of the true class for every image
    plain, raysys = np.array(scoring["p_true"]["plain"]), np.array(scoring["p_true"]["raysys"])
    assert len(plain) == len(raysys) == 8
    assert np.abs(plain - raysys).max() <= 1e-6
    assert scoring["p_true_max_abs_diff"] == pytest.approx(np.abs(plain - raysys).max(), abs=1e-12)
    assert plain.std() > 0  # not a constant that any model would match


def test_scripts_do_not_import_ray():
    """The GPU machine runs them without Ray: neither script (nor what it imports of raysys) may
    import it. A fresh interpreter, since this test process has Ray imported by conftest."""
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import gpu_synthesis, gpu_scoring, gpu_suite; "
            "import raysys.generation.speed, raysys.generation.memory, raysys.training.classifier; "
            "from raysys.generation.finetune import load_finetuned; "  # what GenerateBatch.pipeline imports
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS)], capture_output=True, text=True,
                         cwd=BENCHMARKS.parent, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_suite_records_every_phase_and_skips_what_does_not_fit(tmp_path):
    """gpu_suite.py at tiny size without torch.compile: one JSON line per measurement, each rate
    its images over its seconds; the phases past the budget recorded as skipped, not lost."""
    gpu_suite.main(["--out", str(tmp_path), "--tiny", "--no-compile", "--budget", "600"])
    rows = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    synthesis = [r for r in rows if r["phase"] == "synthesis"]
    assert {(r["path"], r["mode"], r["batch"]) for r in synthesis} == {
        (p, m, b) for p in ("plain_fp16", "raysys_bf16") for m in ("text", "img2img") for b in (2, 4)}
    for r in synthesis + [r for r in rows if r["phase"] == "speed_ladder"]:
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"], rel=1e-9)
    img2img = {r["path"]: r["unet_gflop_per_image"] for r in synthesis if r["mode"] == "img2img" and r["batch"] == 2}
    text = {r["path"]: r["unet_gflop_per_image"] for r in synthesis if r["mode"] == "text" and r["batch"] == 2}
    assert img2img["plain_fp16"] == pytest.approx(text["plain_fp16"] / 2)  # strength 0.5: half the UNet calls
    ladder = [r["step"] for r in rows if r["phase"] == "speed_ladder"]
    assert ladder == ["float32", "+channels_last", "+fused_qkv", "+encode_threads_4",
                      "dpm++_20_steps (changes the images)"]
    fused = next(r for r in rows if r.get("step") == "+fused_qkv")
    assert fused["attention"] == {"FusedAttnProcessor2_0": fused["attention"]["FusedAttnProcessor2_0"]}
    scoring = [r for r in rows if r["phase"] == "scoring" and "ratio" in r]
    assert len(scoring) == 1 and scoring[0]["p_true_max_abs_diff"] <= 1e-6
    step = next(r for r in rows if r["phase"] == "finetune_step")
    assert step["images_per_s"] == pytest.approx(step["steps"] * step["batch"] / step["seconds"], rel=1e-9)
    assert step["trainable_params"] > 0
    assert next(r for r in rows if r["phase"] == "classifier_step")["gflop_per_image"] > 0

    cut = tmp_path / "cut"
    gpu_suite.main(["--out", str(cut), "--tiny", "--no-compile", "--budget", "1"])
    cut_rows = [json.loads(line) for line in (cut / "suite.jsonl").read_text().splitlines()]
    assert cut_rows[0]["phase"] == "environment"
    assert [r["phase"] for r in cut_rows[1:]] == ["build tiny", "synthesis tiny", "speed_ladder tiny", "scoring",
                                                 "finetune_step tiny", "classifier_step"]
    assert all("skipped" in r for r in cut_rows[1:])


def test_second_run_measures_what_the_first_left_out(tmp_path):
    """`gpu_suite.py --second` (the call that the first GPU run could not make) at tiny size:
    where plain diffusers' time goes, scoring, the fine-tune step, each recorded, none skipped; its
    temporary folder (no --work) removed afterwards."""
    import glob
    import tempfile

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "gpu_suite_*")))
    gpu_suite.main(["--out", str(tmp_path), "--tiny", "--no-compile", "--second", "--budget", "600"])
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "gpu_suite_*"))) == before
    rows = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    assert [r["phase"] for r in rows] == ["environment", "build", "where_time_goes", "scoring", "scoring", "scoring",
                                          "finetune_step"]
    where = rows[2]
    for key in ("plain_unet_alone", "plain_to_latent", "plain_to_pt", "plain_to_pil", "raysys_unet_alone",
                "raysys_to_latent", "raysys_to_np"):
        assert where[key] > 0, key
    assert where["plain_unet_dtype"] == "torch.float32"  # half precision only on a GPU
    assert where["plain_attention"] == "AttnProcessor2_0"
    assert rows[5]["p_true_max_abs_diff"] <= 1e-6
    assert rows[6]["trainable_params"] > 0
