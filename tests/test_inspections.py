"""The double-random draw (dispatch/inspections.py): pure, table-driven."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter

import pytest

from dispatch import inspections
from dispatch.inspections import (
    ALGORITHM,
    DEFAULT_RISK_WEIGHTS,
    DrawError,
    Entity,
    Inspector,
    Matter,
    draw,
    redraw,
    verify,
)

FIRE = Matter("M04", "fire")


def inspectors(n: int, dept: str = "fire", prefix: str = "I") -> list[Inspector]:
    return [Inspector(f"{prefix}{k:02d}", dept) for k in range(n)]


def entities(classes: str) -> list[Entity]:
    return [Entity(f"E{k:03d}", c) for k, c in enumerate(classes)]


ENTS = entities("ABCD" * 10)
POOL = inspectors(8)


def picks(d: inspections.Draw) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((p.entity_id, p.inspector_ids) for p in d.picks)


# ---------------------------------------------------------------- the random stream
def test_stream_follows_the_documented_formula() -> None:
    seed = "公开抽签-2025-05"
    stream = inspections._Stream(seed)
    for k in range(5):
        digest = hashlib.sha256(f"{ALGORITHM}\n{seed}\n{k}".encode()).digest()
        expected = (int.from_bytes(digest[:8], "big") >> 11) / 2**53
        assert stream.uniform() == expected


def test_golden_draw_pins_the_algorithm() -> None:
    """If this fails the algorithm changed: old draws no longer re-run. Bump ALGORITHM
    (and keep the old one for old draws) instead of editing the expected value."""
    d = draw("golden", FIRE, inspectors(6), entities("ABCD" * 10), [("I01", "E001")],
             targets=5, risk_weights=DEFAULT_RISK_WEIGHTS)
    assert d.result_json() == {
        "algorithm": "gridhub-double-random-v1",
        "picks": GOLDEN_PICKS,
    }


GOLDEN_PICKS = [
    {"entity_id": "E031", "risk_class": "D", "inspectors": ["I03", "I04"]},
    {"entity_id": "E035", "risk_class": "D", "inspectors": ["I00", "I02"]},
    {"entity_id": "E024", "risk_class": "A", "inspectors": ["I01", "I05"]},
    {"entity_id": "E027", "risk_class": "D", "inspectors": ["I02", "I05"]},
    {"entity_id": "E030", "risk_class": "C", "inspectors": ["I01", "I04"]},
]


def reference_draw(seed: str, department: str, inspector_list: list[Inspector],
                   entity_list: list[Entity], conflicts: list[tuple[str, str]], targets: int,
                   team: int, weights: dict[str, float] | None) -> list[dict[str, object]]:
    """Steps 1-4 of the module docstring, written again from the text alone."""
    pool = sorted({i.id for i in inspector_list if i.department == department})
    ents = sorted({(e.id, e.risk_class) for e in entity_list})
    banned = set(conflicts)
    k = 0

    def u() -> float:
        nonlocal k
        h = hashlib.sha256((ALGORITHM + "\n" + seed + "\n" + str(k)).encode("utf-8")).digest()
        k += 1
        return (int.from_bytes(h[:8], "big") >> 11) / 2**53

    w = [1.0 if weights is None else weights[c] for _, c in ents]
    left = list(range(len(ents)))
    order = []
    for _ in range(targets):
        r = u() * sum(w[j] for j in left)
        run = 0.0
        chosen = [j for j in left if w[j] > 0][-1]
        for j in left:
            if w[j] <= 0:
                continue
            run += w[j]
            if run > r:
                chosen = j
                break
        left.remove(chosen)
        order.append(chosen)
    load = dict.fromkeys(pool, 0)
    out: list[dict[str, object]] = []
    for j in order:
        eid, cls = ents[j]
        members: list[str] = []
        for _ in range(team):
            cands = [i for i in pool if (i, eid) not in banned and i not in members]
            low = min(load[i] for i in cands)
            cands = [i for i in cands if load[i] == low]
            pick = cands[min(int(u() * len(cands)), len(cands) - 1)]
            members.append(pick)
            load[pick] += 1
        out.append({"entity_id": eid, "risk_class": cls, "inspectors": members})
    return out


@pytest.mark.parametrize("weights", [None, DEFAULT_RISK_WEIGHTS, {"A": 0.5, "B": 0.0,
                                                                  "C": 3.0, "D": 7.25}])
def test_documentation_matches_code(weights: dict[str, float] | None) -> None:
    conflicts = [("I01", "E001"), ("I02", "E005"), ("I03", "E005")]
    for k in range(40):
        seed = f"doc-{k}"
        d = draw(seed, FIRE, POOL, ENTS, conflicts, targets=12, inspectors_per_target=2 + k % 2,
                 risk_weights=weights)
        assert d.result_json()["picks"] == reference_draw(
            seed, "fire", POOL, ENTS, conflicts, 12, 2 + k % 2, weights)


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("seed", ["a", "2025-05 月度抽查", "0" * 64])
@pytest.mark.parametrize("shuffle", [1, 2, 3])
@pytest.mark.parametrize("weights", [None, DEFAULT_RISK_WEIGHTS])
def test_same_seed_same_draw_in_any_input_order(seed: str, shuffle: int,
                                                 weights: dict[str, float] | None) -> None:
    conflicts = [("I01", "E003"), ("I02", "E003"), ("I05", "E010")]
    base = draw(seed, FIRE, POOL, ENTS, conflicts, targets=10, risk_weights=weights)
    rng = random.Random(shuffle)
    ins = POOL + inspectors(4, dept="health", prefix="H")  # other departments are ignored
    ents, confl = list(ENTS), list(conflicts)
    for seq in (ins, ents, confl):
        rng.shuffle(seq)
    again = draw(seed, FIRE, ins, ents, confl, targets=10, risk_weights=weights)
    assert again.result_json() == base.result_json()
    assert again.params_json() == base.params_json()


def test_different_seeds_give_different_draws() -> None:
    results = {picks(draw(f"seed-{k}", FIRE, POOL, ENTS, [], targets=5)) for k in range(30)}
    assert len(results) == 30


# ---------------------------------------------------------------- teams and recusal
@pytest.mark.parametrize(
    ("n_inspectors", "targets", "team"),
    [(2, 1, 2), (2, 40, 2), (3, 10, 3), (8, 10, 2), (8, 40, 4), (20, 3, 2)],
)
def test_every_target_gets_a_team_of_distinct_inspectors(n_inspectors: int, targets: int,
                                                         team: int) -> None:
    for seed in ("x", "y", "z"):
        d = draw(seed, FIRE, inspectors(n_inspectors), ENTS, [], targets=targets,
                 inspectors_per_target=team)
        assert len(d.picks) == targets
        assert len({p.entity_id for p in d.picks}) == targets
        for p in d.picks:
            assert len(p.inspector_ids) == team
            assert len(set(p.inspector_ids)) == team
            assert all(i.startswith("I") for i in p.inspector_ids)


@pytest.mark.parametrize(("n_inspectors", "targets", "team"), [(10, 10, 2), (7, 20, 2),
                                                                (6, 9, 3)])
def test_load_is_balanced(n_inspectors: int, targets: int, team: int) -> None:
    for seed in map(str, range(10)):
        loads = draw(seed, FIRE, inspectors(n_inspectors), ENTS, [], targets=targets,
                     inspectors_per_target=team).loads()
        assert max(loads.values()) - min(loads.values()) <= 1


CONFLICT_SETS = [
    [("I00", "E000")],
    [(f"I{k:02d}", "E005") for k in range(6)],  # only I06 and I07 may inspect E005
    [(i.id, e.id) for i, e in itertools.product(POOL[:4], ENTS[:20])],
    [(i.id, e.id) for i, e in itertools.product(POOL, ENTS) if (int(i.id[1:]) + int(e.id[1:]))
     % 3 == 0],
]


@pytest.mark.parametrize("conflicts", CONFLICT_SETS)
def test_recusal_is_honoured(conflicts: list[tuple[str, str]]) -> None:
    banned = set(conflicts)
    for seed in map(str, range(25)):
        d = draw(seed, FIRE, POOL, ENTS, conflicts, targets=40)  # every entity is drawn
        for p in d.picks:
            assert not banned & {(i, p.entity_id) for i in p.inspector_ids}
    e005 = next(p for p in draw("s", FIRE, POOL, ENTS, CONFLICT_SETS[1], targets=40).picks
                if p.entity_id == "E005")
    assert sorted(e005.inspector_ids) == ["I06", "I07"]


# ---------------------------------------------------------------- risk weighting
def _class_counts(weights: dict[str, float] | None, seeds: int = 300) -> Counter[str]:
    counts: Counter[str] = Counter()
    for k in range(seeds):
        for p in draw(f"w{k}", FIRE, POOL, ENTS, [], targets=4, risk_weights=weights).picks:
            counts[p.risk_class] += 1
    return counts


def test_risk_weighting_shifts_selection_towards_high_risk() -> None:
    weighted = _class_counts(DEFAULT_RISK_WEIGHTS)
    uniform = _class_counts(None)
    # Weights 1:2:4:8 over ten entities per class: D about 8 times as often as A.
    assert weighted["D"] > 5 * weighted["A"]
    assert weighted["A"] < weighted["B"] < weighted["C"] < weighted["D"]
    # Unweighted: every class about a quarter of 1200 picks.
    assert all(230 <= uniform[c] <= 370 for c in "ABCD"), uniform


def test_zero_weight_is_never_drawn() -> None:
    for seed in map(str, range(30)):
        d = draw(seed, FIRE, POOL, ENTS, [], targets=30,
                 risk_weights={"A": 0.0, "B": 1.0, "C": 1.0, "D": 1.0})
        assert all(p.risk_class != "A" for p in d.picks)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"inspectors": inspectors(1)}, "inspection.not_enough_inspectors"),
        ({"inspectors": inspectors(5, dept="health")}, "inspection.not_enough_inspectors"),
        ({"inspectors": inspectors(3), "conflicts": [("I00", "E000"), ("I01", "E000")],
          "entities": entities("B")}, "inspection.not_enough_inspectors"),
        ({"team": 4, "inspectors": inspectors(3)}, "inspection.not_enough_inspectors"),
        ({"targets": 41}, "inspection.not_enough_entities"),
        ({"targets": 11, "weights": {"A": 0.0, "B": 0.0, "C": 0.0, "D": 1.0}},
         "inspection.not_enough_entities"),
        ({"weights": {"A": 1.0, "B": 1.0, "C": 1.0}}, "inspection.bad_weights"),
        ({"weights": {"A": -1.0, "B": 1.0, "C": 1.0, "D": 1.0}}, "inspection.bad_weights"),
        ({"weights": {"A": float("nan"), "B": 1.0, "C": 1.0, "D": 1.0}},
         "inspection.bad_weights"),
        ({"team": 1}, "inspection.bad_input"),
        ({"targets": 0}, "inspection.bad_input"),
        ({"seed": ""}, "inspection.bad_input"),
        ({"entities": [Entity("E1", "E")]}, "inspection.bad_input"),
        ({"entities": [Entity("E1", "A"), Entity("E1", "B")]}, "inspection.bad_input"),
    ],
)
def test_draw_errors(kwargs: dict[str, object], code: str) -> None:
    args: dict[str, object] = {"seed": "s", "inspectors": POOL, "entities": ENTS,
                               "conflicts": [], "targets": 1, "team": 2, "weights": None}
    args.update(kwargs)
    with pytest.raises(DrawError) as err:
        draw(args["seed"], FIRE, args["inspectors"], args["entities"],  # type: ignore[arg-type]
             args["conflicts"], targets=args["targets"],  # type: ignore[arg-type]
             inspectors_per_target=args["team"],  # type: ignore[arg-type]
             risk_weights=args["weights"])  # type: ignore[arg-type]
    assert err.value.code == code


# ---------------------------------------------------------------- re-running a stored draw
def test_redraw_from_params_reproduces() -> None:
    d = draw("re-run", FIRE, POOL, ENTS, [("I03", "E007")], targets=12,
             risk_weights=DEFAULT_RISK_WEIGHTS)
    assert redraw("re-run", d.params_json()).result_json() == d.result_json()
    assert verify("re-run", ALGORITHM, d.params_json(), d.result_json()).reproduced


def _tampered_result(d: inspections.Draw) -> dict[str, object]:
    res = d.result_json()
    res["picks"][0]["inspectors"][0] = "I99"
    return res


def _tampered_params(d: inspections.Draw) -> dict[str, object]:
    params = d.params_json()
    params["entities"] = [[e, "D" if c == "A" else c] for e, c in params["entities"]]
    return params


@pytest.mark.parametrize(
    ("seed", "algorithm", "params", "result", "why"),
    [
        ("other", ALGORITHM, None, None, "another seed"),
        ("t", "gridhub-double-random-v0", None, None, "another algorithm"),
        ("t", ALGORITHM, None, _tampered_result, "edited result"),
        ("t", ALGORITHM, _tampered_params, None, "edited inputs"),
        ("t", ALGORITHM, lambda d: {"targets": 3}, None, "malformed inputs"),
    ],
)
def test_verify_detects_changes(seed: str, algorithm: str, params: object, result: object,
                                why: str) -> None:
    d = draw("t", FIRE, POOL, ENTS, [], targets=6, risk_weights=DEFAULT_RISK_WEIGHTS)
    p = params(d) if callable(params) else d.params_json()
    r = result(d) if callable(result) else d.result_json()
    outcome = verify(seed, algorithm, p, r)  # type: ignore[arg-type]
    assert not outcome.reproduced, why
    assert outcome.reason


# ---------------------------------------------------------------- committed seeds
SECRET = "5e" * 32
INPUTS = inspections.prepare(FIRE, POOL, ENTS, [("I01", "E003")], targets=6,
                             risk_weights=DEFAULT_RISK_WEIGHTS)
TERMS = inspections.Terms("M04", 6, 2, DEFAULT_RISK_WEIGHTS)


def test_committed_seed_follows_the_documented_formula() -> None:
    canonical = json.dumps(INPUTS.params_json(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    digest = hashlib.sha256(canonical).hexdigest()
    assert INPUTS.digest() == digest
    assert inspections.commitment_of(SECRET) == hashlib.sha256(SECRET.encode()).hexdigest()
    seed = hashlib.sha256(f"gridhub-commit-reveal-v1\n{SECRET}\n{digest}".encode()).hexdigest()
    d = inspections.committed_draw(SECRET, INPUTS)
    assert d.seed == seed and d.result_json() == draw(
        seed, FIRE, POOL, ENTS, [("I01", "E003")], targets=6,
        risk_weights=DEFAULT_RISK_WEIGHTS).result_json()


def test_same_inputs_and_secret_give_the_same_draw_in_any_order() -> None:
    rng = random.Random(7)
    ins, ents = list(POOL), list(ENTS)
    rng.shuffle(ins)
    rng.shuffle(ents)
    again = inspections.prepare(FIRE, ins, ents, [("I01", "E003")], targets=6,
                                risk_weights=dict(reversed(DEFAULT_RISK_WEIGHTS.items())))
    assert again.digest() == INPUTS.digest()
    assert (inspections.committed_draw(SECRET, again).result_json()
            == inspections.committed_draw(SECRET, INPUTS).result_json())
    others = {picks(inspections.committed_draw(f"{k:064x}", INPUTS)) for k in range(20)}
    assert len(others) == 20  # the secret, not the drawer, decides


@pytest.mark.parametrize("change", [
    {"targets": 7}, {"inspectors_per_target": 3}, {"risk_weights": None},
    {"entities": ENTS[1:]}, {"inspectors": POOL[1:]}, {"conflicts": []},
])
def test_every_input_changes_the_seed(change: dict[str, object]) -> None:
    """Editing the registry (or the terms) after the commitment gives another seed, so
    the drawer cannot keep a seed and move the inputs under it."""
    args: dict[str, object] = {"inspectors": POOL, "entities": ENTS,
                               "conflicts": [("I01", "E003")], "targets": 6,
                               "inspectors_per_target": 2, "risk_weights": DEFAULT_RISK_WEIGHTS}
    args.update(change)
    other = inspections.prepare(FIRE, args.pop("inspectors"), args.pop("entities"),  # type: ignore[arg-type]
                                args.pop("conflicts"), **args)  # type: ignore[arg-type]
    assert other.digest() != INPUTS.digest()
    assert (inspections.committed_seed(SECRET, other.digest())
            != inspections.committed_seed(SECRET, INPUTS.digest()))


def _published() -> dict[str, object]:
    d = inspections.committed_draw(SECRET, INPUTS)
    return {"commitment": inspections.commitment_of(SECRET), "terms": TERMS,
            "committed_at": 100.0, "drawn_at": 200.0, "secret": SECRET, "seed": d.seed,
            "algorithm": ALGORITHM, "params": d.params_json(), "result": d.result_json()}


@pytest.mark.parametrize(("edit", "why"), [
    ({}, None),
    ({"secret": "00" * 32}, "does not match the commitment"),
    ({"committed_at": 200.0}, "not made before"),
    ({"terms": inspections.Terms("M04", 5, 2, DEFAULT_RISK_WEIGHTS)}, "terms differ"),
    ({"terms": inspections.Terms("M04", 6, 2, None)}, "terms differ"),
    ({"seed": "chosen-by-hand"}, "seed is not"),
    ({"result": {"algorithm": ALGORITHM, "picks": []}}, "differs from the re-run"),
])
def test_verify_committed(edit: dict[str, object], why: str | None) -> None:
    outcome = inspections.verify_committed(**{**_published(), **edit})  # type: ignore[arg-type]
    assert outcome.reproduced is (why is None)
    if why:
        assert outcome.reason and why in outcome.reason
