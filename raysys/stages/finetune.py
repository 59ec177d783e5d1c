"""Stage `finetune`: LoRA fine-tuning of the base generator on Ray Train.

For each of `finetune.variants` (difficulty: LoRA + difficulty encoder; plain: LoRA only) it
trains on the scored manifest's train rows and writes <root>/finetune/<variant>/adapters/
(`pytorch_lora_weights.safetensors` in diffusers' format, plus `difficulty_encoder/`). A killed
run resumes from its last checkpoint. The proof of control is the next stage, `control`: a
sampling setting re-renders it and never retrains a LoRA.

Each row's text is `generator.prompt_template` filled with its class name and its `caption`
(raysys.generation.prompts.fill_prompt). The metrics give, per variant, `prompts_seen` (the
first step's prompts, up to 8), and `prompts_cut`: how many train rows' prompts are longer
than the base's text encoder takes, which cuts them.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow.compute as pc

from raysys.core import run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.generation.finetune import FinetuneJob, check_finetune, finetune_loop, prompts_for
from raysys.generation.prompts import cut_prompts, prompt_tokenizer
from raysys.generation.memory_checks import finetune_problems
from raysys.ray.train import Workers, fit, run_concurrently
from raysys.ray.tracking import check_tracking, tracked


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _run(stage: StageRun) -> dict:
    cfg, f = stage.cfg, stage.cfg.finetune
    if not run_layout.builtin_generator(cfg):
        from raysys.generation.components import check_base

        check_base(cfg.generator.base)
    class_names = run_layout.stage_metrics(cfg, "prepare")["class_names"]
    if f.concurrent_variants > 1 and len(f.variants) > 1:
        print(f"[finetune] {len(f.variants)} variants, {min(f.concurrent_variants, len(f.variants))} at a time",
              flush=True)
    with run_layout.local_base_model(cfg) as base:  # Train workers (and a restarted one) load the base from it
        cut = _prompts_cut(cfg, base, class_names)
        calls = [functools.partial(_finetune, cfg, variant, base, class_names, f"finetune-{variant}-{stage.digest}",
                                   stage.file("ray"), stage.file(variant, "adapters")) for variant in f.variants]
        metrics = run_concurrently(calls, f.concurrent_variants, [f"finetune {v}" for v in f.variants])
    return {"variants": dict(zip(f.variants, metrics)), "prompts_cut": cut}


def _prompts_cut(cfg: RaysysConfig, base: str, class_names: list[str]) -> int:
    """How many of the train rows' fine-tune prompts are longer than the base's text encoder takes
    (it cuts them); prints one line when some are."""
    train = read_manifest(run_layout.scored_manifest(cfg), columns=["label", "caption"],
                          where=pc.field("split") == "train")
    prompts = prompts_for(train["label"].to_numpy(), class_names, cfg.generator.prompt_template,
                          train["caption"].to_pylist())
    tokenizer = prompt_tokenizer(base)
    cut = cut_prompts(tokenizer, prompts)
    if cut:
        print(f"[finetune] {cut} of {len(prompts)} fine-tune prompts are longer than the text encoder's "
              f"{tokenizer.model_max_length} tokens and were cut", flush=True)
    return cut


def _finetune(cfg: RaysysConfig, variant: str, base: str, class_names: list[str], run_name: str, ray_dir: str,
              adapters: str) -> dict:
    """Fine-tune one variant on Ray Train (resuming from its last checkpoint); returns its metrics."""
    f = cfg.finetune
    t0 = time.time()
    workers = Workers(f.num_workers, f.use_gpu, f.cpus_per_worker, f.max_failures)
    job = FinetuneJob(variant=variant, base=base, manifest=run_layout.scored_manifest(cfg), class_names=class_names,
                      prompt_template=cfg.generator.prompt_template, cfg=f, seed=cfg.run.seed,
                      name=f"finetune {variant}")
    state = fit(finetune_loop, job, workers, run_name, ray_dir, outputs={"adapters": adapters},
                tracking=tracked(cfg, STAGE))
    if state["step"] != f.steps:
        raise RuntimeError(f"finetune {variant}: last checkpoint is at step {state['step']}, expected {f.steps}")
    losses = state["losses"]
    window = max(1, min(50, len(losses) // 5))
    metrics = {
        "seconds": round(time.time() - t0, 2), "steps": f.steps, "losses_logged": len(losses),
        "loss_start": float(np.mean(losses[:window])), "loss_end": float(np.mean(losses[-window:])),
        "resumed_at_steps": state["resumes"], "prompts_seen": state.get("prompts", []),
    }
    print(f"[finetune] {variant}: {f.steps} steps in {metrics['seconds']:.0f}s, loss "
          f"{metrics['loss_start']:.4f} -> {metrics['loss_end']:.4f}")
    return metrics


STAGE = Stage(
    name="finetune", reads=("prepare", "score", "pretrain_generator"), run=_run,
    config=("generator.base", "generator.prompt_template", "finetune", "run.seed"),
    check=lambda cfg: check_finetune(cfg.finetune, cfg.generator) + finetune_problems(cfg) + check_tracking(cfg),
    describe="LoRA (+ difficulty encoder) fine-tunes of the base generator on Ray Train: <variant>/adapters/",
)
