"""What the two GPU benchmarks (gpu_synthesis.py, gpu_scoring.py) share: FLOP counting, MFU, the
device's peak FLOP/s, peak memory, timing, and the synthetic test images. No Ray, no raysys.

Everything here that yields a number is a plain function of its arguments, so that
tests/unit/test_gpu_benchmarks.py can check it by hand.
"""

from __future__ import annotations

import io
import platform
import re
import time
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Peak dense FLOP/s of NVIDIA GPUs, in TFLOP/s, by a regex on torch.cuda.get_device_name().
# The datasheets print the tensor-core figures "with sparsity" (2:4 structured sparsity); the
# dense figure, the one a dense UNet or CNN can reach, is half of it. fp32 is the non-tensor
# FP32 figure (PyTorch runs fp32 matmuls without TF32 by default; cuDNN convolutions may use
# TF32, so an fp32 MFU can read high). First match wins, so the specific names come first.
#   H100 SXM / H200 SXM: H100 datasheet and H200 datasheet (2024): BF16/FP16 tensor 1,979 TFLOP/s
#       with sparsity -> 989 dense; FP32 67.
#   H100 PCIe: 1,513 with sparsity -> 756 dense; FP32 51.
#   H100 NVL / H200 NVL: 1,671 with sparsity -> 835 dense; FP32 60.
#   A100 (SXM4 and PCIe, 40/80 GB): A100 datasheet: BF16/FP16 tensor 312 dense (624 with
#       sparsity); FP32 19.5.
#   A10: A10 datasheet: BF16/FP16 tensor 125 dense (250 with sparsity); FP32 31.2.
# A10G (AWS g5) is not the A10 and NVIDIA publishes no datasheet for it, so it is not listed
# (the A10 pattern does not match it): pass --peak-tflops.
PEAK_TFLOPS = [
    (r"H100.*PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    (r"H100.*NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (r"H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"H200.*NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (r"H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
]


def peak_flops(device_name: str, dtype: str, override_tflops: Optional[float] = None) -> Optional[float]:
    """Peak dense FLOP/s: `override_tflops` if given, else the table's entry for the device; None
    when neither applies (a CPU, or a GPU not in the table): MFU is then not reported."""
    if override_tflops is not None:
        return float(override_tflops) * 1e12
    for pattern, by_dtype in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return by_dtype[dtype] * 1e12
    return None


def mfu(flops: float, seconds: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOP utilisation: achieved FLOP/s over peak FLOP/s (None without a peak)."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / peak


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


_cpu_sdpa_flops._get_raw = True  # FlopCounterMode passes tensors, not shapes

# FlopCounterMode knows the CUDA attention kernels (flash, efficient, cuDNN) but not the CPU one
# that F.scaled_dot_product_attention picks (torch 2.x): without this, attention would count 0
# FLOPs on a CPU and the CPU and GPU counts would differ.
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@torch.no_grad()
def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention; a multiply-add is 2 FLOPs)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """(fn(), seconds), the GPU's queued work included."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory over a stretch of work.

    GPU: torch.cuda.max_memory_allocated after a reset (tensors only, the caching allocator's
    reserve not included). CPU: the process's peak RSS (VmHWM), reset by writing 5 to
    /proc/self/clear_refs; where that is not possible the peak is the process's peak since it
    started (monotone: it includes whatever ran before), and `reset` is False. On a CPU the
    figure is process-wide: it includes Python, torch's libraries and whatever heap an earlier
    path left with the allocator, so it is indicative only; the GPU figure is the one to read.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.reset = True

    def start(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.reset = False

    def peak_mib(self) -> Optional[float]:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kib = _status_kib("VmHWM")
        if kib is None:  # no /proc: ru_maxrss (KiB on Linux), never reset
            import resource

            self.reset = False
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib / 1024

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "process peak RSS (VmHWM), reset per path" if self.reset else "process peak RSS since start"


def synthetic_png(index: int, size: int, seed: int = 0) -> bytes:
    """A deterministic smooth RGB image (random 4x4 colours, bilinear up to `size`), PNG-encoded."""
    rng = np.random.default_rng([seed, index])
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((size, size), Image.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("diffusers", "transformers", "timm", "pillow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda or ""
    return out


def quiet_libraries() -> None:
    """Only errors and no progress bars from diffusers / transformers, so the table stays readable
    (called when run as a script, not on import)."""
    for name in ("diffusers", "transformers"):
        try:
            logging = __import__(f"{name}.utils.logging", fromlist=["logging"])
        except ImportError:
            continue
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def fmt(value: Optional[float], spec: str, none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
