"""Memory and throughput of prepare and score as the data grows: N images, then factor x N.

For each size it makes an image folder of colour JPEGs (10 classes, `--size` px), then runs,
each in a fresh process with its own embedded Ray:
  prepare   the stage itself (list -> split -> read, check, store and write parts on Ray Data);
  plain     a plain PyTorch DataLoader loop over the prepared parts (the same decoding and
            model: `--cpus` loader workers decode, the model runs on `--cpus` threads);
  score     the Ray Data actor pool (`raysys.ray.scoring.score_manifest`, `--cpus` actors of
            1 CPU) over the same parts, writing the scored parts.
The images are `--size` px JPEGs; the classifier (small_cnn) sees them resized to
`--model-size` px, so decoding, not the model, is most of the work.
The driver's peak RSS in the stage is the kernel's own mark (VmHWM, reset just before the stage,
read just after it: Ray started and packages imported before, Ray's shutdown at exit after, are
not counted); every Ray worker's peak is sampled by this process every 0.1 s (its VmHWM, so
nothing between samples is missed). prepare and score run `--repeats` times per size and the
least memory and the best speed are kept. Printed per size: peak driver RSS, its growth in the
stage, the largest worker's peak RSS, images/s; then the ratios the data plane is held to:
  growth per extra image   (peak(factor N) - peak(N)) / ((factor - 1) N), driver and workers: <= 1 KB
  images/s at factor N / images/s at N:                                                        >= 0.9
  Ray Data scoring / DataLoader scoring, images/s, at each size:                               >= 0.8
and, because a Ray Data actor pool pays a fixed start-up (worker processes that import Ray Data,
torch and the model) that a forked DataLoader does not, the same ratio for the extra images
alone, (factor - 1) N / (t(factor N) - t(N)), with that fixed cost, t(N) - N / that rate.

    python benchmarks/data_plane_scaling.py [--images 5000] [--factor 8] [--size 128] [--model-size 32] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10


def make_folder(root: Path, n: int, size: int) -> None:
    """root/class_<c>/<i>.jpg: n colour JPEGs, smooth random images tinted per class."""
    from PIL import Image

    rng = np.random.default_rng(n)
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
    tint = rng.uniform(0.5, 1.0, (CLASSES, 3))
    for i in range(n):
        c = i % CLASSES
        low = rng.uniform(0, 255, (8, 8, 3)) * tint[c]
        img = Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BICUBIC)
        noisy = np.asarray(img, np.int16) + rng.integers(-12, 13, (size, size, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / f"class_{c}" / f"{i:06d}.jpg", quality=90)


def _status_kb(field: str, pid: int | str = "self") -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM, RssAnon), or 0 where there is none."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _start_measuring() -> int:
    """This process's RSS now, with the kernel's peak-RSS mark (VmHWM) reset to it (Linux): the
    driver's peak in the stage is then exact, and what the process does after it (Ray's shutdown
    at exit) is not counted."""
    import psutil

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def _stage_peak() -> int:
    """This process's peak RSS since `_start_measuring` (0 where /proc has no VmHWM)."""
    return _status_kb("VmHWM")


def _config(folder: Path, root: Path, size: int, rows_per_part: int, cpus: int):
    from raysys.stages import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [
        f"run.root={root}", f"run.num_cpus={cpus}", f"data.source=folder:{folder}", "data.channels=3",
        f"data.image_size={size}", "data.max_per_class=0", "data.val_per_class=5", "data.test_per_class=5",
        "data.pretrain_per_class=0", f"data.rows_per_part={rows_per_part}", "generator.base=none-needed",
    ])


# ---- the measured work, each run in a child process ------------------------------------------

def child_prepare(args) -> dict:
    from raysys.ray.session import init_ray
    from raysys.stages import prepare

    cfg = _config(Path(args.folder), Path(args.root), args.size, args.rows_per_part, args.cpus)
    init_ray(None, num_cpus=args.cpus)
    base = _start_measuring()
    t0 = time.perf_counter()
    m = prepare.run(cfg)
    seconds = time.perf_counter() - t0
    return {"images": m["rows"], "seconds": seconds, "driver_before": base, "driver_stage_peak": _stage_peak()}


class PartImages(torch.utils.data.IterableDataset):
    """A manifest folder's parts, one worker's share each: (uint8 image, label), decoded as raysys does."""

    def __init__(self, parts: list[str], size: int):
        self.parts, self.size = parts, size

    def __iter__(self):
        from raysys.core.schema import read_manifest
        from raysys.data.images import decode

        info = torch.utils.data.get_worker_info()
        mine = self.parts if info is None else self.parts[info.id::info.num_workers]
        for part in mine:
            table = read_manifest(part, columns=["image", "label"])
            for data, label in zip(table["image"].to_pylist(), table["label"].to_pylist()):
                yield torch.from_numpy(decode(data, self.size, 3)), label


def _model_dir(size: int) -> str:
    from raysys.models.classifiers import create_classifier, save_classifier

    torch.manual_seed(0)
    directory = tempfile.mkdtemp(prefix="raysys-bench-model-")
    save_classifier(create_classifier("small_cnn", CLASSES, 3, width=32), directory,
                    {"name": "small_cnn", "num_classes": CLASSES, "in_chans": 3, "width": 32, "image_size": size})
    return directory


def _score_inputs(args):
    import pyarrow.compute as pc

    from raysys.core import run_layout
    from raysys.core.schema import list_parts, read_manifest

    cfg = _config(Path(args.folder), Path(args.root), args.size, args.rows_per_part, args.cpus)
    source = run_layout.real_manifest(cfg)
    splits = ["train", "val", "test"]
    n = len(read_manifest(source, columns=["split"], where=pc.field("split").isin(splits)))
    return source, list_parts(source), splits, n


def child_plain(args) -> dict:
    """DataLoader workers decode, the model runs in this process."""
    from raysys.models.classifiers import load_classifier, normalize

    _, parts, _, n = _score_inputs(args)
    torch.set_num_threads(args.cpus)
    model, _ = load_classifier(_model_dir(args.model_size), torch.device("cpu"))
    loader = torch.utils.data.DataLoader(PartImages(parts, args.model_size), batch_size=args.batch_size,
                                         num_workers=args.cpus)
    t0 = time.perf_counter()
    seen = 0
    with torch.no_grad():
        for x, _ in loader:
            torch.softmax(model(normalize(x, model)).float(), 1)
            seen += len(x)
    assert seen == n, (seen, n)
    return {"images": n, "seconds": time.perf_counter() - t0}


def child_score(args) -> dict:
    from raysys.core.config import ScoreConfig
    from raysys.ray.scoring import score_manifest
    from raysys.ray.session import init_ray

    source, _, splits, n = _score_inputs(args)
    model_dir = _model_dir(args.model_size)
    init_ray(None, num_cpus=args.cpus)
    score = ScoreConfig(batch_size=args.batch_size, min_actors=args.cpus, max_actors=args.cpus, cpus_per_actor=1)
    out = str(Path(args.root) / "score" / "manifest")
    base = _start_measuring()
    t0 = time.perf_counter()
    summary = score_manifest(source, out, {"full": model_dir}, {}, splits, score, total=n)
    seconds = time.perf_counter() - t0
    assert len(summary) == n, (len(summary), n)
    return {"images": n, "seconds": seconds, "driver_before": base, "driver_stage_peak": _stage_peak()}


# ---- the parent: runs children and samples their memory ---------------------------------------

def _is_worker(cmdline: str) -> bool:
    return cmdline.startswith("ray::") or "default_worker.py" in cmdline


def run_sampled(cmd: list[str], key, private: dict | None = None) -> tuple[dict, dict]:
    """Run `cmd`, a child that prints one JSON line last, sampling every 0.1 s the peak RSS (VmHWM:
    the peak between samples too) of it and of its descendants: (its JSON, {key: peak bytes}),
    where `key(process, child_pid)` names what a process counts as (None: not counted). `private`,
    where given, gets {key: the largest private memory sampled} (RssAnon: the heap and anonymous
    maps, without the libraries and the shared object store pages that RSS also counts)."""
    import psutil

    env = {**os.environ, "RAY_ADDRESS": "", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    peaks: dict = {}
    done = threading.Event()

    def sample():
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                for p in [parent, *parent.children(recursive=True)]:
                    try:
                        name = key(p, proc.pid)
                        if name is not None:
                            peaks[name] = max(peaks.get(name, 0), p.memory_info().rss, _status_kb("VmHWM", p.pid))
                            if private is not None:
                                private[name] = max(private.get(name, 0), _status_kb("RssAnon", p.pid))
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}); rerun it alone: {' '.join(cmd)}")
    return json.loads(out.strip().splitlines()[-1]), peaks


def run_child(kind: str, folder: Path, root: Path, args) -> dict:
    """Run one child; peak RSS (bytes) of the driver and of each Ray worker while it ran."""
    cmd = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--root", str(root),
           "--size", str(args.size), "--model-size", str(args.model_size), "--cpus", str(args.cpus), "--rows-per-part", str(args.rows_per_part),
           "--batch-size", str(args.batch_size)]

    def key(p, child_pid):
        return "driver" if p.pid == child_pid else (p.pid if _is_worker(" ".join(p.cmdline())) else None)

    result, peaks = run_sampled(cmd, key)
    workers = [v for k, v in peaks.items() if k != "driver"]
    # the child's own exact peak in the stage where the kernel gives it, else the sampled one
    result["driver_peak"] = result.get("driver_stage_peak") or peaks.get("driver", 0)
    result["worker_peak"] = max(workers, default=0)
    result["workers_seen"] = len(workers)
    return result


def mib(x: float) -> str:
    return f"{x / 2**20:8.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000, help="N")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="side of the JPEGs, in pixels")
    ap.add_argument("--model-size", type=int, default=32, help="side of the classifier's input, in pixels")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rows-per-part", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="runs of prepare and of score per size (the least memory is kept)")
    ap.add_argument("--workdir", default=None, help="where the image folders and runs go (default: a temporary folder)")
    ap.add_argument("--child", choices=["prepare", "plain", "score"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = {"prepare": child_prepare, "plain": child_plain, "score": child_score}[args.child](args)
        print(json.dumps(result))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="raysys-bench-"))
    sizes = [args.images, args.images * args.factor]
    results = {}
    for n in sizes:
        folder = work / f"images_{n}"
        if not folder.exists():
            t0 = time.time()
            make_folder(folder, n, args.size)
            print(f"made {n} JPEGs at {args.size} px in {time.time() - t0:.0f}s -> {folder}", flush=True)
        root = work / f"run_{n}"
        subprocess.run(["rm", "-rf", str(root)], check=True)
        results[n] = {}
        for kind in ("prepare", "plain", "score"):
            runs = []
            for _ in range(1 if kind == "plain" else args.repeats):
                if kind == "prepare":
                    subprocess.run(["rm", "-rf", str(root)], check=True)
                runs.append(run_child(kind, folder, root, args))
            # the smallest peaks and the best speed of the repeats: one-off spikes are not the data's
            results[n][kind] = {**min(runs, key=lambda r: r["seconds"]),
                                "driver_peak": min(r["driver_peak"] for r in runs),
                                "driver_growth": min(r["driver_peak"] - r.get("driver_before", 0) for r in runs),
                                "worker_peak": min(r["worker_peak"] for r in runs)}
        jpeg = sum(f.stat().st_size for f in folder.rglob("*.jpg")) / n
        print(f"N={n}: {jpeg / 1024:.1f} KB per JPEG", flush=True)
        for kind, r in results[n].items():
            growth = f"(+{mib(r['driver_growth'])} in the stage)" if "driver_before" in r else " " * 28
            print(f"  {kind:8s} driver {mib(r['driver_peak'])} {growth}  largest worker {mib(r['worker_peak'])} "
                  f"({r['workers_seen']} workers)  {r['images'] / r['seconds']:8.1f} images/s", flush=True)

    small, big = sizes
    extra = big - small
    print(f"\nimages {small} -> {big}, {args.size} px JPEGs, classifier at {args.model_size} px, {args.cpus} CPUs, "
          f"{args.rows_per_part} rows per part")
    for kind in ("prepare", "score"):
        a, b = results[small][kind], results[big][kind]
        growth_driver = (b["driver_growth"] - a["driver_growth"]) / extra
        growth_worker = (b["worker_peak"] - a["worker_peak"]) / extra
        speed = (b["images"] / b["seconds"]) / (a["images"] / a["seconds"])
        print(f"{kind:8s} growth per extra image: driver {growth_driver / 1024:6.2f} KB, largest worker "
              f"{growth_worker / 1024:6.2f} KB (target <= 1 KB); images/s {big} / {small}: {speed:.3f} (target >= 0.9)")
    for n in sizes:
        r, plain = results[n]["score"], results[n]["plain"]
        print(f"score    Ray Data / DataLoader images/s at N={n}: {plain['seconds'] / r['seconds']:.3f} (target >= 0.8)")
    score, plain = (results[small]["score"], results[big]["score"]), (results[small]["plain"], results[big]["plain"])
    rate_score = extra / (score[1]["seconds"] - score[0]["seconds"])
    rate_plain = extra / (plain[1]["seconds"] - plain[0]["seconds"])
    print(f"score    extra images only, {small} -> {big}: Ray Data {rate_score:.1f} images/s, DataLoader "
          f"{rate_plain:.1f} images/s, ratio {rate_score / rate_plain:.3f}; fixed start-up: Ray Data "
          f"{score[0]['seconds'] - small / rate_score:.1f} s, DataLoader {plain[0]['seconds'] - small / rate_plain:.1f} s")


if __name__ == "__main__":
    main()
