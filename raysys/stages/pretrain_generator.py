"""Stage `pretrain_generator`: the quickstart's small base text-to-image model (generator.base = builtin).

Trains a pixel-space SD-layout model from scratch on the `pretrain` split (disjoint from train,
val and test) as one Ray task, then measures how often the baseline classifier recognises its
images as the prompted class. Writes <root>/pretrain_generator/pipeline/ (a diffusers pipeline
directory) and samples.png (one row per class). With a real base model (a Stable Diffusion
directory or hub id) there is nothing to pretrain and the stage is not part of `raysys run`.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow.compute as pc

from raysys.core import io
from raysys.core.config import ConfigError, RaysysConfig, digest
from raysys.core.stage import StageDir
from raysys.stages import prepare, train_classifier

NAME = "pretrain_generator"
RECOGNITION_SEEDS = 20
"""Images per class for the recognition measurement."""


def stage_dir(cfg: RaysysConfig) -> StageDir:
    g = cfg.generator
    return StageDir(cfg.run.root, NAME, digest(prepare.stage_dir(cfg).digest, cfg.pretrain, g.prompt_template))


def pipeline_dir(cfg: RaysysConfig) -> str:
    return stage_dir(cfg).file("pipeline")


def needed(cfg: RaysysConfig) -> bool:
    return cfg.generator.base == "builtin"


def base_location(cfg: RaysysConfig) -> str:
    """Where the fine-tune stage finds its base model: the pretrained pipeline or generator.base."""
    return pipeline_dir(cfg) if needed(cfg) else cfg.generator.base


def _pretrain_and_measure(cfg: RaysysConfig, images, labels, class_names, out_dir, classifier_dir, real_png):
    """Runs inside one Ray task: train, save, and generate/score the recognition set.

    For scale, the same classifier also scores the real pretrain images twice: at their own
    resolution, and downscaled to the generator's size and back (what the generator learns from).
    """
    import torch

    from raysys.data.images import encode_png
    from raysys.generation.components import load_pipeline
    from raysys.generation.control import SamplingOptions, control_grid
    from raysys.generation.pretrain import pretrain_base
    from raysys.scoring.difficulty import DifficultyScorer

    device = "cuda" if cfg.pretrain.use_gpu else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "pipeline")
        metrics = pretrain_base(images, labels, class_names, cfg.pretrain, cfg.generator.prompt_template, local,
                                seed=cfg.run.seed, device=device)
        io.copy_dir(local, out_dir)
        pipe = load_pipeline(local).to(device)
    g = cfg.generator
    opts = SamplingOptions(g.guidance_scale, g.num_inference_steps, g.scheduler, g.negative_prompt)
    prompts = [g.prompt_template.format(name=n) for n in class_names]
    with torch.no_grad():
        grid = control_grid(pipe, prompts, [0.0], RECOGNITION_SEEDS, opts, with_difficulty=False, first_seed=10_000)
    samples = grid.images[:, 0]  # (classes, seeds, H, W, C)
    if classifier_dir is not None:
        scorer = DifficultyScorer({"baseline": classifier_dir})
        flat = samples.reshape(-1, *samples.shape[2:])
        labels_flat = grid.labels[:, 0].ravel()
        scores = scorer([encode_png(im[..., 0] if im.shape[-1] == 1 else im) for im in flat], labels_flat,
                        ["baseline"] * len(flat))
        correct = (scores["pred"] == labels_flat).reshape(len(class_names), -1)
        metrics["recognition"] = float(correct.mean())
        metrics["recognition_per_class"] = [round(float(x), 3) for x in correct.mean(axis=1)]
        metrics["recognition_images"] = int(correct.size)
        real_small = [encode_png(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)) for im in images]
        for key, encoded in (("recognition_real_native", real_png), ("recognition_real_same_size", real_small)):
            real = scorer(encoded, labels, ["baseline"] * len(labels))
            metrics[key] = float((real["pred"] == labels).mean())
            metrics[f"{key}_per_class"] = [round(float((real["pred"][labels == c] == c).mean()), 3)
                                           for c in range(len(class_names))]
    return metrics, samples


def run(cfg: RaysysConfig) -> dict:
    stage = stage_dir(cfg)
    if stage.is_complete():
        print(f"[pretrain_generator] complete for this config, skipped ({stage.path})")
        return stage.metrics()
    if not needed(cfg):
        raise ConfigError(f"generator.base is '{cfg.generator.base}': there is no built-in model to pretrain")
    table, prep = prepare.load(cfg)
    table = table.filter(pc.equal(table["split"], "pretrain"))
    if table.num_rows == 0:
        raise ConfigError("the pretrain split is empty: set data.pretrain_per_class > 0 to pretrain the built-in generator")
    stage.begin(cfg)
    from raysys.data.images import decode_batch
    from raysys.ray.finetune import remote_task
    from raysys.report.plots import image_grid

    size = cfg.pretrain.image_size
    images = decode_batch(table["image"].to_pylist(), size, cfg.data.channels)
    labels = table["label"].to_numpy().astype(np.int64)
    classifier = train_classifier.stage_dir(cfg)
    classifier_dir = train_classifier.model_dir(cfg) if classifier.is_complete() else None
    task = remote_task(_pretrain_and_measure, num_cpus=cfg.pretrain.cpus, num_gpus=1 if cfg.pretrain.use_gpu else 0)
    metrics, samples = task(cfg, images, labels, prep["class_names"], pipeline_dir(cfg),
                            io.local_copy(classifier_dir) if classifier_dir else None, table["image"].to_pylist())
    image_grid(samples[:, :10], stage.file("samples.png"), row_labels=prep["class_names"],
               col_labels=[f"seed {i}" for i in range(10)], title="pretrained base generator: prompt per row")
    metrics = stage.finish({"pretrain_images": int(table.num_rows), "image_size": size, **metrics})
    recognition = metrics.get("recognition")
    print(f"[pretrain_generator] {metrics['steps']} steps in {metrics['train_seconds']:.0f}s, loss "
          f"{metrics['loss_start']:.4f} -> {metrics['loss_end']:.4f}; baseline classifier recognises "
          + (f"{recognition:.1%} of {metrics['recognition_images']} generated images (real pretrain images: "
             f"{metrics['recognition_real_native']:.1%} at their size, {metrics['recognition_real_same_size']:.1%} "
             f"at the generator's {size} px)" if recognition is not None
             else "(no baseline classifier yet: recognition not measured)"))
    return metrics
