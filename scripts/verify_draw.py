#!/usr/bin/env python3
"""Check published double-random inspection draws (双随机一公开) yourself.

Usage:
    python3 verify_draw.py public.json      (or "-" to read standard input)

where public.json is what the hub publishes without login: ``/api/inspections/public``
(every published draw) or ``/api/inspections/public/draws/ID`` (one draw). Needs Python
3.10+ and nothing else: this file uses only the standard library and does not import the
hub's code, so it checks the hub rather than trusting it. It prints one JSON line per draw
and exits 0 when every draw passes, 1 when one does not, 2 on bad usage or input.

For each draw it checks, from the published facts alone:
1. SHA-256(secret) is the commitment, which was published before the draw;
2. the draw kept the terms the commitment announced (matter, targets, team size, weights);
3. the seed is SHA-256("gridhub-commit-reveal-v1\\n" + secret + "\\n" + inputs digest),
   the digest being SHA-256 of the inputs' canonical JSON: so nobody chose the seed;
4. re-running the draw (algorithm "gridhub-double-random-v1") from the seed and the
   published inputs gives exactly the published targets and inspectors, in order;
5. the named targets and inspectors listed are those of the re-run.

The algorithm is re-written here from its description (dispatch/inspections.py in the
hub's source, also in docs/SECURITY.md), so it can be compared line by line.
"""

import hashlib
import json
import math
import sys

ALGORITHM = "gridhub-double-random-v1"
SEED_SCHEME = "gridhub-commit-reveal-v1"
RISK_CLASSES = ("A", "B", "C", "D")


class Failed(Exception):
    pass


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def canonical_inputs(params):
    """Step 1: the inputs in canonical form (sorted, duplicates removed)."""
    try:
        inspectors = sorted({str(i) for i in params["inspectors"]})
        entities = {}
        for eid, cls in params["entities"]:
            eid, cls = str(eid), str(cls)
            if cls not in RISK_CLASSES:
                raise Failed(f"entity {eid} has an unknown risk class {cls!r}")
            if entities.setdefault(eid, cls) != cls:
                raise Failed(f"entity {eid} has two risk classes")
        pool, ents = set(inspectors), set(entities)
        conflicts = sorted({(str(i), str(e)) for i, e in params["conflicts"]
                            if str(i) in pool and str(e) in ents})
        weights = params["risk_weights"]
        if weights is not None:
            weights = {str(k): float(weights[k]) for k in sorted(weights)}
        return {
            "matter_id": str(params["matter_id"]),
            "department": str(params["department"]),
            "targets": int(params["targets"]),
            "inspectors_per_target": int(params["inspectors_per_target"]),
            "risk_weights": weights,
            "inspectors": inspectors,
            "entities": [[e, entities[e]] for e in sorted(entities)],
            "conflicts": [[i, e] for i, e in conflicts],
        }
    except (KeyError, TypeError, ValueError) as e:
        raise Failed(f"malformed inputs: {e!r}") from e


def rerun(seed, inputs):
    """Steps 2-4: the random numbers, the weighted targets, the teams."""
    prefix = (ALGORITHM + "\n" + seed + "\n").encode("utf-8")
    counter = [0]

    def u():
        digest = hashlib.sha256(prefix + str(counter[0]).encode("ascii")).digest()
        counter[0] += 1
        return (int.from_bytes(digest[:8], "big") >> 11) / 2.0 ** 53

    ents = inputs["entities"]
    weights = []
    for _eid, cls in ents:
        if inputs["risk_weights"] is None:
            weights.append(1.0)
            continue
        w = inputs["risk_weights"].get(cls)
        if w is None or not math.isfinite(w) or w < 0:
            raise Failed(f"bad risk weight for class {cls!r}")
        weights.append(w)
    if sum(1 for w in weights if w > 0) < inputs["targets"]:
        raise Failed("fewer drawable entities than targets")
    taken = [False] * len(ents)
    order = []
    for _ in range(inputs["targets"]):
        total = 0.0
        for w, t in zip(weights, taken, strict=False):
            if not t:
                total += w
        r = u() * total
        running, chosen = 0.0, -1
        for k, (w, t) in enumerate(zip(weights, taken, strict=False)):
            if t or w <= 0:
                continue
            running += w
            chosen = k
            if running > r:
                break
        taken[chosen] = True
        order.append(chosen)
    banned = {(i, e) for i, e in inputs["conflicts"]}
    load = {i: 0 for i in inputs["inspectors"]}
    picks = []
    for k in order:
        eid, cls = ents[k]
        eligible = [i for i in inputs["inspectors"] if (i, eid) not in banned]
        if len(eligible) < inputs["inspectors_per_target"]:
            raise Failed(f"entity {eid}: too few unconflicted inspectors")
        team = []
        for _ in range(inputs["inspectors_per_target"]):
            free = [i for i in eligible if i not in team]
            low = min(load[i] for i in free)
            tier = [i for i in free if load[i] == low]
            pick = tier[min(math.floor(u() * len(tier)), len(tier) - 1)]
            team.append(pick)
            load[pick] += 1
        picks.append({"entity_id": eid, "risk_class": cls, "inspectors": team})
    return picks


def _weights_of(value):
    return None if value is None else {str(k): float(v) for k, v in value.items()}


def check(draw):
    """Raise Failed with the reason unless every check passes."""
    c = draw.get("commitment")
    if not c:
        raise Failed("no commitment: this draw's seed was not fixed in advance")
    secret = draw.get("secret")
    if not isinstance(secret, str) or not secret:
        raise Failed("the secret is not revealed (the draw is not published)")
    if sha256_hex(secret.encode("utf-8")) != c["commitment"]:
        raise Failed("SHA-256 of the revealed secret is not the commitment")
    if not float(c["committed_at"]) < float(draw["drawn_at"]):
        raise Failed("the commitment was not made before the draw")
    if draw.get("algorithm") != ALGORITHM:
        raise Failed("unknown algorithm {!r}".format(draw.get("algorithm")))
    inputs = canonical_inputs(draw["params"])
    announced = (str(c["matter_id"]), int(c["targets"]), int(c["inspectors_per_target"]),
                 _weights_of(c["risk_weights"]))
    used = (inputs["matter_id"], inputs["targets"], inputs["inspectors_per_target"],
            inputs["risk_weights"])
    if announced != used or draw.get("matter_id", inputs["matter_id"]) != inputs["matter_id"]:
        raise Failed("the draw's terms are not the announced ones")
    digest = sha256_hex(canonical_json(inputs))
    if draw.get("inputs_digest") not in (None, digest):
        raise Failed("the published inputs digest is not the inputs' digest")
    seed = sha256_hex((SEED_SCHEME + "\n" + secret + "\n" + digest).encode("utf-8"))
    if draw.get("seed") != seed:
        raise Failed("the seed is not the one the secret and the inputs give")
    picks = rerun(seed, inputs)
    if picks != draw["result"]["picks"]:
        raise Failed("re-running the draw gives other targets or inspectors")
    listed = [(p["entity_id"], [i["id"] if isinstance(i, dict) else i
                                for i in p["inspectors"]]) for p in draw.get("picks", picks)]
    if listed != [(p["entity_id"], p["inspectors"]) for p in picks]:
        raise Failed("the listed targets or inspectors differ from the re-run")


def draws_in(doc):
    if isinstance(doc, dict) and isinstance(doc.get("draws"), list):
        return doc["draws"]
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and "result" in doc:
        return [doc]
    raise Failed("not a published draw or list of draws")


def main(argv):
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        if argv[0] == "-":
            doc = json.load(sys.stdin)
        else:
            with open(argv[0], encoding="utf-8") as f:
                doc = json.load(f)
        draws = draws_in(doc)
    except (OSError, ValueError, Failed) as e:
        print(f"cannot read {argv[0]}: {e}", file=sys.stderr)
        return 2
    ok = True
    for d in draws:
        try:
            check(d)
            line = {"draw_id": d.get("id"), "reproduced": True, "reason": None}
        except (Failed, KeyError, TypeError, ValueError) as e:
            ok = False
            line = {"draw_id": d.get("id") if isinstance(d, dict) else None,
                    "reproduced": False, "reason": str(e) or repr(e)}
        print(json.dumps(line, ensure_ascii=False))
    print(json.dumps({"draws": len(draws), "all_reproduced": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
