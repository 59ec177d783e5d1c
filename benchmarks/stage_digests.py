"""The cost of every stage's digest (the config's fingerprint that names each stage's folder and
decides what reruns), per shipped config: raysys's conversion of the config dataclasses against
OmegaConf's (`OmegaConf.to_container(OmegaConf.structured(...))`, what digests used before), in
one run. Both must give the same digests; the run fails (exit 1) if one differs.

    python benchmarks/stage_digests.py                 # every config in configs/
    python benchmarks/stage_digests.py configs/ablation.yaml

A comparison of N variants × seeds has a curriculum unit per run; evaluate, report and tune read
them all, and each unit's digest includes every stage upstream of it, so a config with many
units computes thousands of conversions.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from raysys.core import loading  # noqa: E402
from raysys.core.config import RUNTIME  # noqa: E402
from raysys.stages import STAGES, load_config  # noqa: E402


def _without_runtime(obj: Any, plain: Any) -> Any:
    """OmegaConf's container of `obj` less its `runtime` fields, as digests leave them out."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _without_runtime(getattr(obj, f.name), plain[f.name])
                for f in dataclasses.fields(obj) if not f.metadata.get(RUNTIME)}
    if isinstance(obj, list):
        return [_without_runtime(v, p) for v, p in zip(obj, plain)]
    return plain


def omegaconf_plain(obj: Any, hint: Any = None) -> Any:
    """The conversion digests used before: OmegaConf's, for every dataclass (less `runtime` fields)."""
    if dataclasses.is_dataclass(obj):
        return _without_runtime(obj, OmegaConf.to_container(OmegaConf.structured(obj)))
    if isinstance(obj, (list, tuple)):
        return [omegaconf_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): omegaconf_plain(v) for k, v in obj.items()}
    return obj


def all_digests(cfg) -> tuple[dict[str, str], float]:
    """Unit folder -> digest for every stage that applies, and the seconds it took."""
    t = time.perf_counter()
    out = {d.name: d.digest for s in STAGES if s.applies(cfg) for d in s.dirs(cfg)}
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="*", help="config files (default: every configs/*.yaml)")
    args = ap.parse_args(argv)
    paths = args.configs or sorted(str(p) for p in (REPO / "configs").glob("*.yaml"))
    ours = loading._plain
    print(f"{'config':<34} {'units':>5} {'OmegaConf s':>12} {'raysys s':>9} {'ratio':>7}")
    failed = False
    for path in paths:
        cfg = load_config(path)
        loading._plain = omegaconf_plain
        try:
            before, slow = all_digests(cfg)
        finally:
            loading._plain = ours
        now, fast = all_digests(cfg)
        same = before == now
        failed |= not same
        print(f"{Path(path).name:<34} {len(now):>5} {slow:>12.2f} {fast:>9.3f} {slow / fast:>6.0f}×"
              + ("" if same else "  DIGESTS DIFFER"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
