"""Stage `train_classifier`: the real-only baseline classifier, trained on Ray Train.

Writes <root>/train_classifier/model/ (classifier.json + model.safetensors) and per-epoch
metrics. A killed run resumes from its last checkpoint when the same command is rerun.
"""

from __future__ import annotations

from raysys.core import io
from raysys.core.config import RaysysConfig, digest
from raysys.core.stage import StageDir
from raysys.ray.train import ClassifierJob, fit_classifier, history_summary
from raysys.stages import prepare

NAME = "train_classifier"


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return StageDir(cfg.run.root, NAME, digest(prepare.stage_dir(cfg).digest, cfg.classifier, cfg.train))


def model_dir(cfg: RaysysConfig) -> str:
    return stage_dir(cfg).file("model")


def run(cfg: RaysysConfig) -> dict:
    stage = stage_dir(cfg)
    if stage.is_complete():
        print(f"[train_classifier] complete for this config, skipped ({stage.path})")
        return stage.metrics()
    _, prep = prepare.load(cfg)
    stage.begin(cfg)
    job = ClassifierJob(
        cfg=cfg,
        manifest=prepare.manifest_path(cfg),
        num_classes=prep["num_classes"],
        groups=prep["groups"],
        storage=io.join(stage.path, "ray"),
        name=f"classifier-{stage.digest}",
        epochs=cfg.train.epochs,
    )
    fit = fit_classifier(job, model_dir(cfg))
    history = fit.history
    summary = history_summary(history)
    metrics = stage.finish({
        "classifier": cfg.classifier.name,
        "num_workers": cfg.train.num_workers,
        "train_images": sum(prep["counts"]["train"]),
        "images_per_s": round(sum(prep["counts"]["train"]) * len(history) / sum(h["seconds"] for h in history), 2),
        **summary,
        "resumed_at_epochs": fit.resumed_at_epochs,
        "epochs": history,
    })
    print(
        f"[train_classifier] test acc {summary['acc']:.4f}  many {summary['acc_many']}  "
        f"medium {summary['acc_medium']}  few {summary['acc_few']}  macro-F1 {summary['macro_f1']:.4f}"
    )
    return metrics
