"""Stage `train_classifier`: the real-only baseline classifier, trained on Ray Train.

Writes <root>/train_classifier/model/ (classifier.json + model.safetensors) and per-epoch
metrics. A killed run resumes from its last checkpoint when the same command is rerun.
"""

from __future__ import annotations

from raysys.core import run_layout
from raysys.core.config import RaysysConfig
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.models.classifiers import check_classifier
from raysys.ray.train import Workers, fit
from raysys.ray.tracking import check_tracking, tracked
from raysys.training.classifier import ClassifierJob, ClassifierSetup, check_train, classifier_loop, history_summary


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _run(stage: StageRun) -> dict:
    cfg = stage.cfg
    prep = run_layout.stage_metrics(cfg, "prepare")
    job = ClassifierJob(setup=ClassifierSetup.of(cfg), manifest=run_layout.real_manifest(cfg),
                        num_classes=prep["num_classes"], groups=prep["groups"], epochs=cfg.train.epochs,
                        name="train_classifier")
    state = fit(classifier_loop, job, Workers.for_training(cfg.train), f"classifier-{stage.digest}", stage.file("ray"),
                outputs={"model": stage.file("model")}, tracking=tracked(cfg, STAGE))
    history = state["history"]
    if len(history) != cfg.train.epochs:
        raise RuntimeError(f"train_classifier: the last checkpoint has {len(history)} epochs, expected {cfg.train.epochs}")
    summary = history_summary(history)
    train_images = sum(prep["counts"]["train"])
    print(f"[train_classifier] test acc {summary['acc']:.4f}  many {summary['acc_many']}  "
          f"medium {summary['acc_medium']}  few {summary['acc_few']}  macro-F1 {summary['macro_f1']:.4f}")
    return {
        "classifier": cfg.classifier.name,
        "num_workers": cfg.train.num_workers,
        "train_images": train_images,
        "images_per_s": round(train_images * len(history) / sum(h["seconds"] for h in history), 2),
        **summary,
        "resumed_at_epochs": state.get("resumes", []),
        "epochs": history,
    }


STAGE = Stage(
    name="train_classifier", reads=("prepare",), run=_run,
    config=("classifier", "train", "run.seed"),
    check=lambda cfg: check_classifier(cfg.classifier) + check_train(cfg.train) + check_tracking(cfg),
    describe="the real-only baseline classifier on Ray Train: model/",
)
