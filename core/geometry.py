"""Plane geometry on (lon, lat) pairs: the one point-in-polygon test of the tree.

Grids are small (a few kilometres), so the even-odd ray test on raw degrees is exact
enough; callers that care about points on a boundary keep a margin. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Ring = Sequence[Sequence[float]]  # [(lon, lat), ...], closed or not


@dataclass(frozen=True, slots=True)
class Polygon:
    """A ring prepared for fast point tests: bounding box plus non-horizontal edges as
    (x1, y1, y2, dx/dy). Build once per grid with ``Polygon.of`` and reuse."""

    min_x: float
    min_y: float
    max_x: float
    max_y: float
    edges: tuple[tuple[float, float, float, float], ...]

    @staticmethod
    def of(ring: Ring) -> Polygon:
        pts = [(float(p[0]), float(p[1])) for p in ring]
        if len(pts) > 1 and pts[0] == pts[-1]:
            pts.pop()
        if len(set(pts)) < 3:
            raise ValueError("a polygon ring needs at least 3 distinct points")
        xs = [x for x, _ in pts]
        ys = [y for _, y in pts]
        edges = []
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
            if y1 != y2:  # a horizontal edge never crosses a horizontal ray
                edges.append((x1, y1, y2, (x2 - x1) / (y2 - y1)))
        return Polygon(min(xs), min(ys), max(xs), max(ys), tuple(edges))

    def contains(self, x: float, y: float) -> bool:
        """Ray casting (even-odd rule) after a bounding-box precheck."""
        if x < self.min_x or x > self.max_x or y < self.min_y or y > self.max_y:
            return False
        inside = False
        for x1, y1, y2, k in self.edges:
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * k:
                inside = not inside
        return inside


def point_in_polygon(x: float, y: float, ring: Ring | Polygon) -> bool:
    """Is (x, y) = (lon, lat) inside the ring? Prepare the ring with ``Polygon.of`` when it
    is tested more than once."""
    return (ring if isinstance(ring, Polygon) else Polygon.of(ring)).contains(x, y)
