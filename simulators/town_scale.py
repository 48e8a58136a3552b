"""The scale knob: the demo town with more units and devices, for showing a big deployment.

``python -m simulators.town_scale --units 2000 --devices 10000 --out var/demo/town-big.json``
writes a town file (gridhub-town/1) whose extra units and devices are copies of the
town's own (same kinds, models, qualifications and home grids; ids ``<id>-x<k>``; placed a
little apart, inside the same grid), so every rule, department and road still applies.
Then ``HUB_TOWN_FILE=var/demo/town-big.json ./hubctl demo --publishers 4 --event-every 30``
loads it on a fresh demo (``./hubctl demo`` keeps a town once loaded: start from an empty
var/demo) and publishes it from four processes (simulators/run.py). ``scale_town`` is pure.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Copies stand within ~300 m of their original: in its grid, but apart on the map.
JITTER_DEG = 0.003


def _copies(items: Sequence[Mapping[str, Any]], n: int, rng: random.Random
            ) -> list[dict[str, Any]]:
    out = [dict(x) for x in items]
    k = 2
    while len(out) < n:
        for x in items:
            if len(out) >= n:
                break
            c = copy.deepcopy(dict(x))
            c["id"] = f"{x['id']}-x{k}"
            if "name" in c:
                c["name"] = f"{c['name']}（{k}）"
            for axis in ("lon", "lat"):
                if axis in c:
                    c[axis] = round(float(c[axis]) + rng.uniform(-JITTER_DEG, JITTER_DEG), 6)
            out.append(c)
        k += 1
    return out[:n] if n < len(out) else out


def scale_town(doc: Mapping[str, Any], *, units: int | None = None,
               devices: int | None = None, seed: int = 1) -> dict[str, Any]:
    """The town with ``units`` units and ``devices`` devices (fewer than the town has: the
    first ones; ``None``: as they are)."""
    rng = random.Random(f"scale:{seed}")
    out = dict(doc)
    if units is not None:
        out["units"] = _copies(doc["units"], units, rng)
    if devices is not None:
        out["devices"] = _copies(doc["devices"], devices, rng)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.town_scale", description=__doc__)
    p.add_argument("--town", type=Path,
                   default=Path(__file__).resolve().parent / "data" / "xuxiake.json")
    p.add_argument("--units", type=int, default=None)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if (args.units is not None and args.units < 1) or (
            args.devices is not None and args.devices < 0):
        p.error("--units must be >= 1 and --devices >= 0")
    doc = scale_town(json.loads(args.town.read_text("utf-8")), units=args.units,
                     devices=args.devices)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    print(f"{args.out}: {len(doc['units'])} units, {len(doc['devices'])} devices")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
