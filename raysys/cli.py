"""`raysys <stage> CONFIG [key=value ...] [--address ADDR]`, `raysys run CONFIG ...` and `raysys export SOURCE OUT`.

The stage commands come from the registry (`raysys.stages.STAGES`); `run` runs every stage that
applies to the config, each after the stages it reads; `tune` is run on its own. Complete stages
are skipped. `export` writes a manifest (a Parquet file, or a synthesis plan's folder of parts) to
an image folder: OUT/<class folder>/<sample_id>.png and OUT/labels.csv. Config errors and unusable
data exit with status 2 and one line naming the problem; an interrupted sweep exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from raysys.core.config import RaysysConfig
from raysys.core.loading import ConfigError
from raysys.core.stage import Interrupted, MissingInput, Stage, chain, check_chain, run_stage
from raysys.data.sources import DataError


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _start_ray(stage: Stage, cfg: RaysysConfig) -> None:
    """Ray for a stage that is not complete and needs it (a complete stage needs no Ray)."""
    if stage.needs_ray and not stage.is_complete(cfg):
        from raysys.ray.session import init_ray

        init_ray(cfg.run.address, cfg.run.num_cpus, {"HF_HOME": cfg.run.hf_home} if cfg.run.hf_home else None)


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raysys export", description="Export a manifest to an image folder.")
    parser.add_argument("source", help="manifest .parquet file, or a folder of part-*.parquet (a synthesis plan)")
    parser.add_argument("out", help="output folder: <out>/<class folder>/<sample_id>.<ext> and <out>/labels.csv")
    parser.add_argument("--all", action="store_true", help="also rows a filter rejected (those without image bytes are skipped)")
    parser.add_argument("--split", default=None, help="only rows of this split (train, val, test, ...)")
    args = parser.parse_args(argv)
    from raysys.data.export import export_images

    try:
        n = export_images(args.source, args.out, kept_only=not args.all, split=args.split)
    except (FileNotFoundError, ValueError) as exc:  # no manifest there; an id or path that would leave OUT
        print(f"raysys: error: {exc}", file=sys.stderr)
        return 2
    print(f"[export] {n} images -> {args.out} (labels.csv beside them)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from raysys.stages import BY_COMMAND, STAGES, load_config

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="raysys", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {s.command:20s} {s.describe}" for s in STAGES)
        + "\n  run                  every stage that applies, in order")
    parser.add_argument("stage", choices=[*BY_COMMAND, "run"], metavar="STAGE", help="a stage below, or run")
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
        stages = chain(STAGES, cfg) if args.stage == "run" else [BY_COMMAND[args.stage]]
        check_chain(stages, cfg, "command line" if overrides else args.config)
        start, seconds = time.time(), {}
        for i, stage in enumerate(stages, 1):
            t0 = time.time()
            print(f"== stage {i}/{len(stages)}: {stage.command} (run time so far {_clock(t0 - start)})", flush=True)
            _start_ray(stage, cfg)
            run_stage(stage, cfg)
            seconds[stage.command] = time.time() - t0
            print(f"== stage {i}/{len(stages)}: {stage.command} finished in {seconds[stage.command]:.1f}s", flush=True)
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
