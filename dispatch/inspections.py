"""The "double random, one public" draw (双随机一公开抽查), as a pure, re-runnable function.

For one inspection matter, ``draw`` picks the market entities to inspect (the first
random) and, for each, a team of at least two inspectors of the matter's department (the
second random), never an inspector who must recuse himself from that entity (回避). Its
only source of chance is the ``seed``; given the same seed and the same inputs it returns
the same draw, whatever order the inputs come in, on any machine, in any later version of
this code that keeps ``ALGORITHM``. The draw and its seed are stored and published, so
anyone can re-run it and check that nobody picked the targets or the inspectors by hand.

Algorithm ``gridhub-double-random-v1``
--------------------------------------
Written out so it can be re-implemented in any language:

1. **Canonical inputs.** Inspectors: those whose department equals the matter's, by
   id (sorted by Unicode code point, duplicates removed). Entities: sorted by id.
   Conflicts: the set of (inspector id, entity id) pairs. Risk weights: a weight per
   risk class (``None``: every entity weighs 1). An entity weighing 0 is never drawn.
2. **Random numbers.** The k-th number (k = 0, 1, 2, ...) is
   ``u_k = (first 8 bytes of SHA-256(ALGORITHM + "\\n" + seed + "\\n" + str(k)),
   read as a big-endian unsigned integer, shifted right by 11) / 2**53``, a double in
   [0, 1), strings in UTF-8, ``str(k)`` in decimal. Numbers are used in the order the steps
   below ask for them, one per choice.
3. **Targets** (weighted sampling without replacement). ``targets`` times: ``W`` = sum
   of the weights of the entities not yet drawn (summed left to right in id order, IEEE-754
   doubles); ``r = u_k * W``; walk the undrawn entities in id order adding up their
   weights and take the first one whose running sum exceeds ``r`` (if rounding runs past
   the end, the last undrawn entity with a positive weight). The order of drawing is the
   order of the result.
4. **Inspectors.** For each target in drawing order, ``inspectors_per_target`` times:
   the candidates are the department's inspectors with no conflict with this target and
   not yet on its team; keep those with the fewest targets so far in this draw (load
   balancing); take candidate ``min(floor(u_k * n), n - 1)`` of those ``n`` in id order,
   and count one more target for that inspector. Team members are listed in the order
   they were drawn.

Committed seeds (scheme ``gridhub-commit-reveal-v1``)
----------------------------------------------------
Nobody types or picks a seed. Before a draw, the hub makes a *commitment*: a secret of
``SECRET_BYTES`` random bytes (hex) from the OS's CSPRNG, kept in the database, and
``commitment = SHA-256(secret)`` (hex), published at once with its time and the draw's
terms (matter, targets, team size, risk weights). The draw, later, snapshots the
registries into canonical inputs (step 1) and uses

    inputs_digest = SHA-256(canonical JSON of params)          (hex)
    seed          = SHA-256(SEED_SCHEME + "\n" + secret + "\n" + inputs_digest)   (hex)

where ``params`` is ``Inputs.params_json()`` and the canonical JSON has its keys sorted,
no spaces (``","`` and ``":"``), UTF-8 text rather than ``\\u`` escapes, and numbers as
Python's ``json`` writes them (risk weights are floats: ``1.0``). The secret is revealed
when the draw is published. Whoever draws cannot see the secret, so he cannot know what
any change of inputs would give, and a commitment draws once. docs/SECURITY.md says what
this does and does not protect against.

How to re-run a draw
--------------------
The public JSON (``GET /api/inspections/public``, no login) gives for each published draw
the commitment and its terms and time, the revealed ``secret``, ``seed``, ``algorithm``,
``params`` (every input above, recorded at draw time, so later registry changes do not
matter) and ``result``. ``python3 scripts/verify_draw.py public.json`` re-checks all of it
with nothing but Python's standard library; ``verify_committed`` here makes the same
checks; or follow the steps above in any language.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidInput

ALGORITHM = "gridhub-double-random-v1"
# How a draw's seed is fixed in advance (see "Committed seeds" above).
SEED_SCHEME = "gridhub-commit-reveal-v1"

RISK_CLASSES: tuple[str, ...] = ("A", "B", "C", "D")  # A = lowest risk ... D = highest

# An inspection is done by at least two enforcement officers (行政处罚法 art. 42; the
# double-random rules name teams, not single inspectors): fewer is refused, not rounded up.
MIN_INSPECTORS_PER_TARGET = 2
DEFAULT_INSPECTORS_PER_TARGET = 2

# Risk-weighted draws: each class up doubles the chance (D is drawn 8x as often as A), so
# high-risk entities are checked more often while a low-risk one can still be drawn;
# 差异化抽查 without exempting anyone.
DEFAULT_RISK_WEIGHTS: Mapping[str, float] = {"A": 1.0, "B": 2.0, "C": 4.0, "D": 8.0}

# Seeds are derived (hex SHA-256, 64 characters); older draws kept text seeds up to this.
MAX_SEED_LEN = 200
# 256 bits from the OS's CSPRNG: as hard to guess as SHA-256 is to invert, so the published
# commitment tells nothing about the secret before it is revealed.
SECRET_BYTES = 32

_SCALE = 2.0**53


class DrawError(InvalidInput):
    """A draw that cannot be made. ``code`` is one of ``inspection.not_enough_inspectors``,
    ``inspection.not_enough_entities``, ``inspection.bad_weights``,
    ``inspection.bad_input``."""

    code = "inspection.bad_input"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True, slots=True)
class Matter:
    """An inspection matter (抽查事项); only ``department`` matters to the draw."""

    id: str
    department: str


@dataclass(frozen=True, slots=True)
class Inspector:
    id: str
    department: str


@dataclass(frozen=True, slots=True)
class Entity:
    """A market entity; ``risk_class`` is one of ``RISK_CLASSES``."""

    id: str
    risk_class: str


@dataclass(frozen=True, slots=True)
class Pick:
    """One drawn target and its inspection team, in drawing order."""

    entity_id: str
    risk_class: str
    inspector_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Inputs:
    """The canonical inputs of a draw (step 1): everything but the seed."""

    matter_id: str
    department: str
    targets: int
    inspectors_per_target: int
    risk_weights: Mapping[str, float] | None
    inspector_ids: tuple[str, ...]
    entities: tuple[Entity, ...]
    conflicts: tuple[tuple[str, str], ...]

    def params_json(self) -> dict[str, Any]:
        """Every input as JSON, enough for ``redraw`` to repeat the draw."""
        return {
            "matter_id": self.matter_id,
            "department": self.department,
            "targets": self.targets,
            "inspectors_per_target": self.inspectors_per_target,
            "risk_weights": None if self.risk_weights is None else dict(self.risk_weights),
            "inspectors": list(self.inspector_ids),
            "entities": [[e.id, e.risk_class] for e in self.entities],
            "conflicts": [list(c) for c in self.conflicts],
        }

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of ``params_json`` (see "Committed seeds")."""
        return hashlib.sha256(canonical_json(self.params_json())).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no spaces, UTF-8 (not \\u escapes), floats as Python writes them."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Draw:
    """A finished draw: ``picks`` in drawing order, and the canonical inputs it came from."""

    algorithm: str
    seed: str
    inputs: Inputs
    picks: tuple[Pick, ...]

    def params_json(self) -> dict[str, Any]:
        """Every input of the draw as JSON, enough for ``redraw`` to repeat it."""
        return self.inputs.params_json()

    def result_json(self) -> dict[str, Any]:
        """The picks as JSON (what is stored, published and compared on verification)."""
        return {
            "algorithm": self.algorithm,
            "picks": [
                {"entity_id": p.entity_id, "risk_class": p.risk_class,
                 "inspectors": list(p.inspector_ids)}
                for p in self.picks
            ],
        }

    def loads(self) -> dict[str, int]:
        """Targets per inspector of the pool (0 for those not drawn)."""
        out = dict.fromkeys(self.inputs.inspector_ids, 0)
        for p in self.picks:
            for i in p.inspector_ids:
                out[i] += 1
        return out


class _Stream:
    """The draw's random numbers: step 2 of the algorithm (SHA-256 in counter mode)."""

    def __init__(self, seed: str) -> None:
        self._prefix = f"{ALGORITHM}\n{seed}\n".encode()
        self._k = 0

    def uniform(self) -> float:
        digest = hashlib.sha256(self._prefix + str(self._k).encode("ascii")).digest()
        self._k += 1
        return (int.from_bytes(digest[:8], "big") >> 11) / _SCALE

    def index(self, n: int) -> int:
        return min(math.floor(self.uniform() * n), n - 1)


def _weights(
    entities: Sequence[Entity], risk_weights: Mapping[str, float] | None
) -> list[float]:
    if risk_weights is None:
        return [1.0] * len(entities)
    out = []
    for e in entities:
        w = risk_weights.get(e.risk_class)
        if w is None:
            raise DrawError("inspection.bad_weights",
                            f"no risk weight for class {e.risk_class!r} (entity {e.id})")
        if not (math.isfinite(w) and w >= 0):
            raise DrawError("inspection.bad_weights",
                            f"risk weight of class {e.risk_class!r} must be finite and >= 0")
        out.append(float(w))
    return out


def _weighted_pick(weights: list[float], taken: list[bool], u: float) -> int:
    total = 0.0
    for w, t in zip(weights, taken, strict=True):
        if not t:
            total += w
    r = u * total
    acc = 0.0
    last = -1
    for k, (w, t) in enumerate(zip(weights, taken, strict=True)):
        if t or w <= 0:
            continue
        acc += w
        last = k
        if acc > r:
            return k
    return last  # only reached through rounding at the very end


def prepare(
    matter: Matter,
    inspectors: Iterable[Inspector],
    entities: Iterable[Entity],
    conflicts: Iterable[tuple[str, str]],
    *,
    targets: int,
    inspectors_per_target: int = DEFAULT_INSPECTORS_PER_TARGET,
    risk_weights: Mapping[str, float] | None = None,
) -> Inputs:
    """Step 1: check the inputs and put them in canonical form (order does not matter).

    Raises ``DrawError`` as ``draw`` documents, except for the seed and for
    ``inspection.not_enough_inspectors`` (known only once a target is drawn).
    """
    if targets < 1:
        raise DrawError("inspection.bad_input", "targets must be at least 1")
    if inspectors_per_target < MIN_INSPECTORS_PER_TARGET:
        raise DrawError("inspection.bad_input",
                        f"an inspection team has at least {MIN_INSPECTORS_PER_TARGET} inspectors")
    pool = tuple(sorted({i.id for i in inspectors if i.department == matter.department}))
    by_id: dict[str, Entity] = {}
    for e in entities:
        if e.risk_class not in RISK_CLASSES:
            raise DrawError("inspection.bad_input",
                            f"entity {e.id}: unknown risk class {e.risk_class!r}")
        if by_id.setdefault(e.id, e).risk_class != e.risk_class:
            raise DrawError("inspection.bad_input", f"entity {e.id} has two risk classes")
    ents = tuple(by_id[k] for k in sorted(by_id))
    pool_set, ent_set = set(pool), set(by_id)
    pairs = tuple(sorted({(i, e) for i, e in conflicts if i in pool_set and e in ent_set}))
    weights_map = None if risk_weights is None else {
        k: float(risk_weights[k]) for k in sorted(risk_weights)}
    weights = _weights(ents, weights_map)
    drawable = sum(1 for w in weights if w > 0)
    if drawable < targets:
        raise DrawError("inspection.not_enough_entities",
                        f"matter {matter.id}: {targets} targets asked, {drawable} can be drawn")
    return Inputs(matter_id=matter.id, department=matter.department, targets=targets,
                  inspectors_per_target=inspectors_per_target, risk_weights=weights_map,
                  inspector_ids=pool, entities=ents, conflicts=pairs)


def run(seed: str, inputs: Inputs) -> Draw:
    """Steps 2-4: draw from canonical ``inputs`` with ``seed``."""
    if not seed or len(seed) > MAX_SEED_LEN:
        raise DrawError("inspection.bad_input", f"the seed must be 1-{MAX_SEED_LEN} characters")
    ents, pool = inputs.entities, inputs.inspector_ids
    weights = _weights(ents, inputs.risk_weights)
    rng = _Stream(seed)
    taken = [False] * len(ents)
    order: list[int] = []
    for _ in range(inputs.targets):
        k = _weighted_pick(weights, taken, rng.uniform())
        taken[k] = True
        order.append(k)

    conflicted = set(inputs.conflicts)
    load = dict.fromkeys(pool, 0)
    picks: list[Pick] = []
    for k in order:
        target = ents[k]
        eligible = [i for i in pool if (i, target.id) not in conflicted]
        if len(eligible) < inputs.inspectors_per_target:
            raise DrawError(
                "inspection.not_enough_inspectors",
                f"entity {target.id}: {len(eligible)} unconflicted inspectors of "
                f"{inputs.department}, a team needs {inputs.inspectors_per_target}")
        team: list[str] = []
        for _ in range(inputs.inspectors_per_target):
            free = [i for i in eligible if i not in team]
            least = min(load[i] for i in free)
            tier = [i for i in free if load[i] == least]
            chosen = tier[rng.index(len(tier))]
            team.append(chosen)
            load[chosen] += 1
        picks.append(Pick(target.id, target.risk_class, tuple(team)))

    return Draw(algorithm=ALGORITHM, seed=seed, inputs=inputs, picks=tuple(picks))


def draw(
    seed: str,
    matter: Matter,
    inspectors: Iterable[Inspector],
    entities: Iterable[Entity],
    conflicts: Iterable[tuple[str, str]],
    *,
    targets: int,
    inspectors_per_target: int = DEFAULT_INSPECTORS_PER_TARGET,
    risk_weights: Mapping[str, float] | None = None,
) -> Draw:
    """Draw ``targets`` entities and a team of ``inspectors_per_target`` for each.

    Deterministic in ``seed`` and the inputs, not in their order (see the module
    docstring for the exact algorithm). ``inspectors`` of other departments than the
    matter's are ignored; ``conflicts`` are (inspector id, entity id) pairs that are
    never put together. Raises ``DrawError``: ``inspection.not_enough_inspectors`` when a
    drawn target has fewer unconflicted inspectors than a team needs,
    ``inspection.not_enough_entities`` when fewer entities can be drawn than
    ``targets``, ``inspection.bad_weights`` for a missing, negative or non-finite
    weight, ``inspection.bad_input`` for bad arguments (empty or overlong seed, an
    unknown risk class, one entity id with two risk classes, a team smaller than
    ``MIN_INSPECTORS_PER_TARGET``).
    """
    return run(seed, prepare(matter, inspectors, entities, conflicts, targets=targets,
                             inspectors_per_target=inspectors_per_target,
                             risk_weights=risk_weights))


def inputs_from_params(params: Mapping[str, Any]) -> Inputs:
    """Canonical inputs from stored or published ``params`` (``Inputs.params_json``).

    Raises ``DrawError`` (``inspection.bad_input``) for params that are not of that shape,
    or whatever ``prepare`` raises for them.
    """
    try:
        department = str(params["department"])
        weights = params["risk_weights"]
        return prepare(
            Matter(str(params["matter_id"]), department),
            [Inspector(str(i), department) for i in params["inspectors"]],
            [Entity(str(e), str(c)) for e, c in params["entities"]],
            [(str(i), str(e)) for i, e in params["conflicts"]],
            targets=int(params["targets"]),
            inspectors_per_target=int(params["inspectors_per_target"]),
            risk_weights=None if weights is None else {
                str(k): float(v) for k, v in dict(weights).items()},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DrawError("inspection.bad_input", f"malformed draw parameters: {e!r}") from e


def redraw(seed: str, params: Mapping[str, Any]) -> Draw:
    """Repeat a draw from its stored ``params`` (``Draw.params_json``) and its seed."""
    return run(seed, inputs_from_params(params))


@dataclass(frozen=True, slots=True)
class Verification:
    """Whether a stored draw is what its seed and inputs give; ``reason`` when it is not."""

    reproduced: bool
    reason: str | None = None


def verify(seed: str, algorithm: str, params: Mapping[str, Any],
           result: Mapping[str, Any]) -> Verification:
    """Re-run a stored draw and compare the picks with the stored ``result``."""
    if algorithm != ALGORITHM:
        return Verification(False, f"algorithm {algorithm!r} is not {ALGORITHM!r}")
    try:
        again = redraw(seed, params).result_json()
    except DrawError as e:
        return Verification(False, f"{e.code}: {e.message}")
    if _plain(again) != _plain(result):
        return Verification(False, "the stored result differs from the re-run")
    return Verification(True)


def _plain(value: Any) -> Any:
    """JSON-normalised copy (tuples become lists), so stored and fresh values compare."""
    return json.loads(json.dumps(value, ensure_ascii=False, sort_keys=True))


# ---------------------------------------------------------------- committed seeds
def commitment_of(secret: str) -> str:
    """The public commitment to a secret: SHA-256 (hex) of its UTF-8 bytes."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def committed_seed(secret: str, inputs_digest: str) -> str:
    """The seed of a committed draw: SHA-256 (hex) of ``SEED_SCHEME``, the revealed
    secret and the inputs' digest, joined by newlines."""
    return hashlib.sha256(f"{SEED_SCHEME}\n{secret}\n{inputs_digest}".encode()).hexdigest()


def committed_draw(secret: str, inputs: Inputs) -> Draw:
    """The draw a commitment's secret gives for these inputs: nobody chooses the seed."""
    return run(committed_seed(secret, inputs.digest()), inputs)


@dataclass(frozen=True, slots=True)
class Terms:
    """What a commitment announced before the draw: the matter and the draw's size."""

    matter_id: str
    targets: int
    inspectors_per_target: int
    risk_weights: Mapping[str, float] | None


def verify_committed(*, commitment: str, terms: Terms, committed_at: float, drawn_at: float,
                     secret: str, seed: str, algorithm: str, params: Mapping[str, Any],
                     result: Mapping[str, Any]) -> Verification:
    """Every check a citizen can make on a published committed draw (scripts/verify_draw.py
    makes the same ones without this code): the secret opens the commitment, the
    commitment came first, the inputs keep the announced terms, the seed is the one the
    secret and the inputs give, and the draw re-runs to the published result."""
    if commitment_of(secret) != commitment:
        return Verification(False, "the revealed secret does not match the commitment")
    if not committed_at < drawn_at:
        return Verification(False, "the commitment was not made before the draw")
    try:
        inputs = inputs_from_params(params)
    except DrawError as e:
        return Verification(False, f"{e.code}: {e.message}")
    announced = (terms.matter_id, terms.targets, terms.inspectors_per_target,
                 None if terms.risk_weights is None else _plain(dict(terms.risk_weights)))
    used = (inputs.matter_id, inputs.targets, inputs.inspectors_per_target,
            None if inputs.risk_weights is None else _plain(dict(inputs.risk_weights)))
    if announced != used:
        return Verification(False, "the draw's terms differ from the announced ones")
    if committed_seed(secret, inputs.digest()) != seed:
        return Verification(False, "the seed is not the one the secret and the inputs give")
    return verify(seed, algorithm, params, result)
