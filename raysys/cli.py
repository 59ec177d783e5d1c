"""`raysys <stage> CONFIG [key=value ...] [--address ADDR]`, `raysys run CONFIG ...`, `raysys export SOURCE OUT`
and `raysys random-generator LAYOUT OUT`.

The stage commands come from the registry (`raysys.stages.STAGES`); `run` runs every stage that
applies to the config, each after the stages it reads; `tune` is run on its own. Complete stages
are skipped. `export` writes a manifest (a Parquet file, a folder of parts, or a synthesis plan's
folder, read through its latest.json) to an image folder: OUT/<class folder>/<sample_id>.png and
OUT/labels.csv. Config errors and unusable data exit with status 2 and one line naming the
problem; an interrupted sweep exits with 130.
`random-generator` writes a released Stable Diffusion layout (sd15, sd21-base, sdxl-refiner) at
full size with random weights: a folder that `generator.base` accepts, for trying a config or
measuring without downloading weights.
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
    parser.add_argument("source", help="manifest .parquet file, a folder of part-*.parquet (a synthesis plan's version, "
                        "<output>/<plan>/<digest>), or a synthesis plan's folder <output>/<plan> (the version its "
                        "latest.json names: the last synthesize run's)")
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


def random_generator_main(argv: list[str]) -> int:
    from raysys.generation.layouts import LAYOUTS

    parser = argparse.ArgumentParser(
        prog="raysys random-generator",
        description="Write a released Stable Diffusion layout at full size with random weights.")
    parser.add_argument("layout", choices=list(LAYOUTS), help="; ".join(f"{k}: {v.hub_id}" for k, v in LAYOUTS.items()))
    parser.add_argument("out", help="output folder (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="dtype of the saved weights")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        print(f"raysys: error: {args.out} exists and is not an empty folder; choose a new one", file=sys.stderr)
        return 2
    import torch

    from raysys.generation.layouts import write_random_pipeline

    start = time.time()
    write_random_pipeline(args.layout, args.out, seed=args.seed, dtype=getattr(torch, args.dtype))
    print(f"[random-generator] {args.layout} -> {args.out} in {_clock(time.time() - start)} "
          f"(use it as generator.base={args.out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from raysys.stages import BY_COMMAND, STAGES, load_config

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    if argv[:1] == ["random-generator"]:
        return random_generator_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="raysys", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {s.command:20s} {s.describe}" for s in STAGES)
        + "\n  run                  every stage that applies, in order"
        + "\n\nother commands (each has --help):"
        + "\n  export SOURCE OUT    a manifest as an image folder with labels.csv"
        + "\n  random-generator LAYOUT OUT   a released SD layout at full size, random weights")
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
