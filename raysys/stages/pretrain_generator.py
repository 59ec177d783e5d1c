"""Stage `pretrain_generator`: the quickstart's small base text-to-image model (generator.base = builtin).

Trains a pixel-space SD-layout model from scratch on the `pretrain` split (disjoint from train,
val and test) as one Ray task and writes <root>/pretrain_generator/pipeline/ (a diffusers
pipeline directory). How well it draws the classes (`recognition`, samples.png) is measured by
the control stage, with the sampling settings of the run. With a real base model (a Stable
Diffusion directory or hub id) there is nothing to pretrain and the stage does not apply.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from raysys.core import io
from raysys.core.config import RaysysConfig
from raysys.core.stage import Context, Stage, StageDir, run_stage
from raysys.generation.pipeline import check_prompt_template
from raysys.generation.pretrain import check_pretrain
from raysys.ray.train import remote_task
from raysys.stages import prepare


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def pipeline_dir(cfg: RaysysConfig) -> str:
    return stage_dir(cfg).file("pipeline")


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def needed(cfg: RaysysConfig) -> bool:
    return cfg.generator.base == "builtin"


def base_location(cfg: RaysysConfig) -> str:
    """Where later stages find the base model: the pretrained pipeline or generator.base."""
    return pipeline_dir(cfg) if needed(cfg) else cfg.generator.base


def base_label(cfg: RaysysConfig) -> str:
    """What the `generator` column records for the base model."""
    return f"builtin:{STAGE.digest(cfg)}" if needed(cfg) else cfg.generator.base


def _pretrain(cfg: RaysysConfig, files, rows, class_names, out_dir) -> dict:
    """Runs inside one Ray task: train on the manifest rows `rows` of `files` (without images: each
    step's batch is read and decoded when it is drawn), then save the pipeline to `out_dir`."""
    from raysys.data.stream import Decode, stream_refs
    from raysys.generation.pretrain import pretrain_base

    decode = Decode(files, cfg.pretrain.image_size, cfg.data.channels)
    images = lambda idx: decode(stream_refs(rows, idx))["image"]  # noqa: E731
    labels = rows["label"].to_numpy().astype(np.int64)

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "pipeline")
        metrics = pretrain_base(images, labels, class_names, cfg.pretrain, cfg.generator.prompt_template, local,
                                seed=cfg.run.seed, device="cuda" if cfg.pretrain.use_gpu else "cpu")
        io.copy_dir(local, out_dir)
    return metrics


def _run(ctx: Context) -> dict:
    from raysys.training.classifier import manifest_rows

    cfg = ctx.cfg
    files, rows = manifest_rows(prepare.manifest_path(cfg), ["pretrain"])  # without images
    if rows.num_rows == 0:
        raise ValueError("the pretrain split is empty: set data.pretrain_per_class > 0 to pretrain the built-in generator")
    size = cfg.pretrain.image_size
    task = remote_task(_pretrain, num_cpus=cfg.pretrain.cpus, num_gpus=1 if cfg.pretrain.use_gpu else 0)
    metrics = task(cfg, files, rows, prepare.stage_dir(cfg).metrics()["class_names"], ctx.file("pipeline"))
    print(f"[pretrain_generator] {metrics['steps']} steps in {metrics['train_seconds']:.0f}s, loss "
          f"{metrics['loss_start']:.4f} -> {metrics['loss_end']:.4f} -> {ctx.file('pipeline')}")
    return {"pretrain_images": int(rows.num_rows), "image_size": size, **metrics}


def _check(cfg: RaysysConfig) -> list[str]:
    problems = check_pretrain(cfg.pretrain) + check_prompt_template(cfg.generator.prompt_template)
    if needed(cfg) and cfg.data.pretrain_per_class < 1:
        problems.append("generator.base builtin pretrains on the pretrain split: set data.pretrain_per_class > 0")
    return problems


def pretrain_fingerprint(cfg: RaysysConfig) -> tuple:
    """The model and its training, and the prompts it learns; not the CPUs or GPU it trains on."""
    p = cfg.pretrain
    return (p.image_size, p.block_out_channels, p.cross_attention_levels, p.cross_attention_dim, p.prediction_type,
            p.steps, p.batch_size, p.lr, p.ema_decay, p.condition_dropout, cfg.generator.prompt_template, cfg.run.seed)


STAGE = Stage(
    name="pretrain_generator", reads=(prepare.STAGE,), run=_run, fingerprint=pretrain_fingerprint,
    check=_check, applies=needed,
    ready=lambda cfg: [] if needed(cfg) else [f"generator.base is '{cfg.generator.base}': there is no built-in model to pretrain"],
    describe="the built-in base generator, trained from scratch on the pretrain split (generator.base: builtin): pipeline/",
)
