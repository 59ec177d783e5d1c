"""`raysys <stage> CONFIG [key=value ...] [--address ADDR]` and `raysys export SOURCE OUT`.

Stages: prepare, train-classifier, score, pretrain-generator (only when generator.base is
builtin), finetune, synthesize, curriculum (one schedule: the `curriculum` section), evaluate
and report (the comparison's table and page), and run: every stage that applies, in order, with
curriculum training every `compare.variants` x `compare.seeds` run. Complete stages are skipped.
`tune` runs a Ray Tune sweep (ASHA) over the `tune.space` curriculum fields on the synthetic
images already made, and writes the results table and the best config as YAML.
`export` writes a manifest (a Parquet file, or a synthesis plan's folder of parts) to an image
folder: OUT/<class_name>/<sample_id>.png and OUT/labels.csv.
Config errors and unusable data exit with status 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from raysys.core.config import ConfigError, RaysysConfig, load_config
from raysys.core.stage import Interrupted, MissingInput
from raysys.data.sources import DataError

STAGES = ["prepare", "train-classifier", "score", "pretrain-generator", "finetune", "synthesize", "curriculum",
          "evaluate", "report"]
NEEDS_NO_RAY = {"prepare", "evaluate", "report"}


def _stages_for(cfg: RaysysConfig) -> list[str]:
    from raysys.stages import pretrain_generator

    return [s for s in STAGES if s != "pretrain-generator" or pretrain_generator.needed(cfg)]


def _run_stage(name: str, cfg: RaysysConfig, in_run: bool) -> None:
    """One stage; inside `run`, curriculum trains every run of the comparison."""
    import importlib

    stage = importlib.import_module(f"raysys.stages.{name.replace('-', '_')}")
    if in_run and name == "curriculum":
        complete = all(stage.stage_dir(c).is_complete() for c in stage.curriculum_configs(cfg))
    else:
        complete = stage.stage_dir(cfg).is_complete()
    if name not in NEEDS_NO_RAY and not complete:  # a complete stage needs no Ray
        from raysys.ray.session import init_ray

        init_ray(cfg.run.address, cfg.run.num_cpus, {"HF_HOME": cfg.run.hf_home} if cfg.run.hf_home else None)
    if in_run and name == "curriculum":
        stage.run_all(cfg)
    else:
        stage.run(cfg)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raysys export", description="Export a manifest to an image folder.")
    parser.add_argument("source", help="manifest .parquet file, or a folder of part-*.parquet (a synthesis plan)")
    parser.add_argument("out", help="output folder: <out>/<class_name>/<sample_id>.<ext> and <out>/labels.csv")
    parser.add_argument("--all", action="store_true", help="also rows a filter rejected (those without image bytes are skipped)")
    parser.add_argument("--split", default=None, help="only rows of this split (train, val, test, ...)")
    args = parser.parse_args(argv)
    from raysys.data.export import export_images

    try:
        n = export_images(args.source, args.out, kept_only=not args.all, split=args.split)
    except FileNotFoundError as exc:
        print(f"raysys: error: {exc}", file=sys.stderr)
        return 2
    print(f"[export] {n} images -> {args.out} (labels.csv beside them)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    parser = argparse.ArgumentParser(prog="raysys", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "run", "tune"])
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else embedded Ray)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"run.address={args.address}"] if args.address else [])
    try:
        cfg = load_config(args.config, overrides)
        if (cfg.run.address or os.environ.get("RAY_ADDRESS")) and "://" not in cfg.run.root:
            print(f"raysys: warning: run.root '{cfg.run.root}' is a local path; on a multi-node cluster "
                  "every node must see it (a shared file system), else use an s3:// or gs:// URI",
                  file=sys.stderr)
        in_run = args.stage == "run"
        stages = _stages_for(cfg) if in_run else [args.stage]
        start, seconds = time.time(), {}
        for i, name in enumerate(stages, 1):
            t0 = time.time()
            print(f"== stage {i}/{len(stages)}: {name} (run time so far {_clock(t0 - start)})", flush=True)
            _run_stage(name, cfg, in_run)
            seconds[name] = time.time() - t0
            print(f"== stage {i}/{len(stages)}: {name} finished in {seconds[name]:.1f}s", flush=True)
        if len(stages) > 1:
            print("== " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + f"; total {_clock(time.time() - start)}")
    except (ConfigError, DataError, MissingInput) as exc:
        print(f"raysys: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"raysys: interrupted: {exc}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
