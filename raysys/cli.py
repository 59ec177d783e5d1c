"""`raysys <stage> CONFIG [key=value ...] [--address ADDR]`.

Stages: prepare, train-classifier, score, pretrain-generator (only when generator.base is
builtin), finetune, and run (every stage that applies, in order).
Config errors and unusable data exit with status 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from raysys.core.config import ConfigError, RaysysConfig, load_config
from raysys.data.sources import DataError

STAGES = ["prepare", "train-classifier", "score", "pretrain-generator", "finetune"]


def _stages_for(cfg: RaysysConfig) -> list[str]:
    from raysys.stages import pretrain_generator

    return [s for s in STAGES if s != "pretrain-generator" or pretrain_generator.needed(cfg)]


def _run_stage(name: str, cfg: RaysysConfig) -> dict:
    import importlib

    stage = importlib.import_module(f"raysys.stages.{name.replace('-', '_')}")
    if name != "prepare" and not stage.stage_dir(cfg).is_complete():  # a complete stage needs no Ray
        from raysys.ray.session import init_ray

        init_ray(cfg.run.address, cfg.run.num_cpus, {"HF_HOME": cfg.run.hf_home} if cfg.run.hf_home else None)
    return stage.run(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raysys", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "run"])
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
        stages = _stages_for(cfg) if args.stage == "run" else [args.stage]
        for i, name in enumerate(stages, 1):
            t0 = time.time()
            print(f"== stage {i}/{len(stages)}: {name}", flush=True)
            _run_stage(name, cfg)
            print(f"== {name} finished in {time.time() - t0:.1f}s", flush=True)
    except (ConfigError, DataError) as exc:
        print(f"raysys: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
