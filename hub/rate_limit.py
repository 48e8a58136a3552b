"""Token buckets per key (client address, API key id): pure, time passed in.

``Buckets(rate_per_s, burst).take(key, now)`` answers whether one more request fits and,
when it does not, how many seconds until it would (for ``Retry-After``). Each process keeps
its own buckets, so behind N web nodes a client gets up to N times the rate: the limits are
against floods and scraping, not exact quotas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Keys remembered at most; past this the fullest (idle longest) are forgotten first. A
# forgotten key starts again with a full bucket, which only ever errs towards letting a
# client through; 50,000 addresses is far more than a township's citizens use at once.
MAX_KEYS = 50_000


@dataclass
class Buckets:
    rate_per_s: float
    burst: float
    max_keys: int = MAX_KEYS
    _state: dict[object, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: object, now: float) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds to wait."""
        tokens, at = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate_per_s)
        if tokens >= 1.0:
            self._remember(key, tokens - 1.0, now)
            return 0.0
        self._remember(key, tokens, now)
        return (1.0 - tokens) / self.rate_per_s if self.rate_per_s > 0 else float("inf")

    def _remember(self, key: object, tokens: float, now: float) -> None:
        if key not in self._state and len(self._state) >= self.max_keys:
            # Forget the half that was touched longest ago (dicts keep insertion order and
            # a touched key is re-inserted at the end).
            for old in list(self._state)[: self.max_keys // 2]:
                del self._state[old]
        self._state.pop(key, None)
        self._state[key] = (tokens, now)
