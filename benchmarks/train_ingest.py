"""Training input as the data grows: the Ray Data path against a plain PyTorch DataLoader, N and factor x N images.

It uses the data-plane benchmark's image folders (colour JPEGs, 10 classes, `--size` px; made
if absent) and prepares each once. Then, each in a fresh process, the classifier loop
(`raysys.training.classifier.classifier_loop`, small_cnn at `--model-size` px, `shift`
augmentation, `--epochs` epochs) trains on the train split:
  ray     on Ray Train (one worker holding `--threads` CPUs): every epoch's shard streams as a
          Ray Dataset, `--tasks` Ray Data tasks decoding and augmenting at once;
  plain   the same loop in one process whose batches come from a `DataLoader` with `--tasks`
          worker processes, each decoding and augmenting a whole block with the same `Decode`.
Both train with torch on `--threads` threads and decode in `--tasks` processes, so the same
work runs on the same number of processes. Printed per size: training images/s (the epochs'
own seconds, evaluation of the validation split included in both; the first epoch, which also
starts the decoding processes, is left out and shown apart), the peak RSS of the
training process, of the largest decoding process and of the driver (Ray only); then
  Ray Data / DataLoader images/s, at each size:                                  >= 0.8
  growth per extra image, (peak(factor N) - peak(N)) / ((factor - 1) N):          <= 1 KB
of the training process, the decoding processes and the driver.

Each child runs `--repeats` times per size; the best images/s and the least peak of each role are
kept. Beside the peak RSS, the largest private memory sampled (RssAnon: without the libraries and
the shared object-store pages a Ray process maps as it reads) shows what the process itself holds.

    python benchmarks/train_ingest.py [--images 5000] [--factor 8] [--size 128] [--model-size 32] [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_plane_scaling import REPO, make_folder, run_sampled  # noqa: E402


def _config(folder: Path, root: Path, args):
    from raysys.stages import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [
        f"run.root={root}", f"data.source=folder:{folder}", "data.channels=3",
        f"data.image_size={args.model_size}", "data.max_per_class=0", "data.val_per_class=5",
        "data.test_per_class=5", "data.pretrain_per_class=0", "data.rows_per_part=250", "generator.base=none-needed",
        "classifier.name=small_cnn", "classifier.width=32", f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", "train.augment=[shift]", f"train.input_tasks={args.tasks}",
        f"train.cpus_per_worker={args.threads}", "train.checkpoint_every=1000", "curriculum.schedule=real_only",
    ])


def _job(cfg):
    from raysys.core import run_layout
    from raysys.stages import prepare
    from raysys.training.classifier import ClassifierJob, ClassifierSetup

    prep = prepare.stage_dir(cfg).metrics()
    return ClassifierJob(setup=ClassifierSetup.of(cfg), manifest=run_layout.real_manifest(cfg),
                         num_classes=prep["num_classes"], groups=prep["groups"], epochs=cfg.train.epochs, name="bench")


def _rates(history: list[dict], train_images: int) -> dict:
    """images/s over the epochs after the first (the steady state a long run trains at; the first
    also starts the decoding processes), and over all epochs."""
    seconds = [h["seconds"] for h in history]
    steady = seconds[1:] or seconds
    return {"images": train_images, "epoch_seconds": seconds,
            "images_per_s": train_images * len(steady) / sum(steady),
            "images_per_s_all_epochs": train_images * len(seconds) / sum(seconds)}


def _train_count(cfg) -> int:
    from raysys.stages import prepare

    return sum(prepare.stage_dir(cfg).metrics()["counts"]["train"])


def child_prepare(args) -> dict:
    from raysys.ray.session import init_ray
    from raysys.stages import prepare

    cfg = _config(Path(args.folder), Path(args.root), args)
    init_ray(None, num_cpus=args.threads + args.tasks)
    return {"rows": prepare.run(cfg)["rows"]}


def child_ray(args) -> dict:
    from raysys.ray.session import init_ray
    from raysys.ray.train import Workers, fit
    from raysys.training.classifier import classifier_loop

    cfg = _config(Path(args.folder), Path(args.root), args)
    init_ray(None, num_cpus=args.threads + args.tasks)
    job = _job(cfg)
    state = fit(classifier_loop, job, Workers.for_training(cfg.train), f"bench-{time.time_ns()}",
                tempfile.mkdtemp(prefix="raysys-bench-ray-"))
    return _rates(state["history"], _train_count(cfg))


class Blocks:
    """A map-style dataset of the blocks `ctx.batches` would hand Ray Data: item i is block i decoded."""

    def __init__(self, refs, decode, batch_size: int):
        self.refs, self.decode, self.batch_size = refs, decode, batch_size

    def __len__(self) -> int:
        return -(-len(self.refs) // self.batch_size)

    def __getitem__(self, i: int) -> dict:
        import torch

        block = self.refs.slice(i * self.batch_size, self.batch_size)
        return {k: torch.from_numpy(v) for k, v in self.decode(block).items()}


def child_plain(args) -> dict:
    import torch

    from raysys.core.context import LocalContext
    from raysys.training.classifier import classifier_loop

    class DataLoaderContext(LocalContext):
        def batches(self, refs, decode, batch_size):
            return iter(torch.utils.data.DataLoader(Blocks(refs, decode, batch_size), batch_size=None,
                                                    num_workers=args.tasks, prefetch_factor=2,
                                                    persistent_workers=False))

    cfg = _config(Path(args.folder), Path(args.root), args)
    torch.set_num_threads(args.threads)
    ctx = DataLoaderContext(tempfile.mkdtemp(prefix="raysys-bench-plain-") + "/ckpt")
    classifier_loop(ctx, _job(cfg))
    from raysys.core.context import read_checkpoint

    _, state = read_checkpoint(ctx.directory)
    return _rates(state["history"], _train_count(cfg))


# ---- the parent: runs children and samples their memory ---------------------------------------

def _role(p, kind: str, driver_pid: int) -> str:
    """train (the process that runs the loop), decode (a process that decodes) or driver."""
    cmd = " ".join(p.cmdline())
    if kind == "plain":
        return "train" if p.pid == driver_pid else "decode"
    if p.pid == driver_pid:
        return "driver"
    if "RayTrainWorker" in cmd:
        return "train"
    if cmd.startswith("ray::") and ("MapBatches" in cmd or "IDLE" in cmd or "ReadRange" in cmd or "Decode" in cmd):
        return "decode"
    return "other"


def run_child(kind: str, folder: Path, root: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--root", str(root),
           "--model-size", str(args.model_size), "--tasks", str(args.tasks),
           "--threads", str(args.threads), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    private: dict = {}
    result, peaks = run_sampled(cmd, lambda p, child_pid: _role(p, kind, child_pid), private)
    return {**result, "peaks": peaks, "private": private}


def mib(x: float) -> str:
    return f"{x / 2**20:7.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000, help="N")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="side of the JPEGs, in pixels")
    ap.add_argument("--model-size", type=int, default=32, help="side of the classifier's input, in pixels")
    ap.add_argument("--epochs", type=int, default=3, help="the first is left out of images/s (start-up)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--tasks", type=int, default=1, help="decoding processes (Ray Data tasks / DataLoader workers)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each child per size (best speed, least memory kept)")
    ap.add_argument("--workdir", default=None, help="where the image folders and runs go (default: a temporary folder)")
    ap.add_argument("--child", choices=["prepare", "ray", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"prepare": child_prepare, "ray": child_ray, "plain": child_plain}[args.child](args)))
        return

    # glibc raises its mmap threshold after large blocks are freed, after which the training step's
    # tensors (tens of MiB a batch) come from a heap that only ever grows: the peak RSS of a process
    # then rises with its run time, i.e. with N, whatever it holds. A fixed threshold (the default
    # value, 128 KiB) returns those blocks, in every child and its workers alike (they inherit it).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="raysys-bench-"))
    sizes = [args.images, args.images * args.factor]
    results = {}
    for n in sizes:
        folder, root = work / f"images_{n}", work / f"train_run_{n}"
        if not folder.exists():
            t0 = time.time()
            make_folder(folder, n, args.size)
            print(f"made {n} JPEGs at {args.size} px in {time.time() - t0:.0f}s -> {folder}", flush=True)
        if not (root / "prepare").exists():
            run_child("prepare", folder, root, args)
        results[n] = {}
        runs_of = {"ray": [], "plain": []}
        for _ in range(args.repeats):  # alternated, so a slower spell of the host hits both
            for kind in runs_of:
                runs_of[kind].append(run_child(kind, folder, root, args))
        for kind, runs in runs_of.items():
            # the best speed and the least peak of each role over the repeats: the peak RSS of a
            # 1 GiB process moves by tens of MiB from run to run, which is not the data's
            results[n][kind] = {**max(runs, key=lambda r: r["images_per_s"]),
                                **{m: {role: min(r[m].get(role, 0) for r in runs) for role in runs[0][m]}
                                   for m in ("peaks", "private")},
                                "images_per_s_runs": [round(r["images_per_s"], 1) for r in runs]}
        for kind, r in results[n].items():
            p = r["peaks"]
            print(f"N={n} {kind:5s} {r['images']} train images x {args.epochs} epochs: {r['images_per_s']:7.1f} images/s"
                  f" (best of {r['images_per_s_runs']})"
                  f" after the first epoch ({r['images_per_s_all_epochs']:.1f} over all; epochs {r['epoch_seconds']} s)"
                  f"  train {mib(p.get('train', 0))}  largest decoder {mib(p.get('decode', 0))}"
                  f"  driver {mib(p.get('driver', 0))}; private (RssAnon): "
                  + "  ".join(f"{role} {mib(v)}" for role, v in sorted(r["private"].items())), flush=True)

    small, big = sizes
    print(f"\nimages {small} -> {big}, {args.size} px JPEGs, classifier at {args.model_size} px, {args.tasks} decoding "
          f"process(es), {args.threads} torch thread(s)")
    for n in sizes:
        ray_r, plain = results[n]["ray"], results[n]["plain"]
        print(f"Ray Data / DataLoader training images/s at N={n}: "
              f"{ray_r['images_per_s'] / plain['images_per_s']:.3f} (target >= 0.8); over all epochs, the first's "
              f"start-up included: {ray_r['images_per_s_all_epochs'] / plain['images_per_s_all_epochs']:.3f}")
    extra = results[big]["ray"]["images"] - results[small]["ray"]["images"]
    for kind in ("ray", "plain"):
        for role in ("train", "decode", "driver"):
            a, b = results[small][kind]["peaks"].get(role), results[big][kind]["peaks"].get(role)
            if a and b:
                pa, pb = results[small][kind]["private"].get(role, 0), results[big][kind]["private"].get(role, 0)
                print(f"{kind:5s} {role:6s} growth per extra train image: {(b - a) / extra / 1024:6.2f} KB (target <= 1 KB)"
                      f"; of its private memory: {(pb - pa) / extra / 1024:6.2f} KB")


if __name__ == "__main__":
    main()
