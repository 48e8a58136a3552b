"""The deterministic demo town: Xuxiake town (徐霞客镇), Jiangyin, Jiangsu.

Contract
--------
``generate(seed)`` is pure and deterministic: the same seed gives an equal
document on every run and machine (one ``random.Random(seed)``, no clock, no
iteration over hashed sets). ``to_json(doc)`` renders it byte-stably. The
document is format ``gridhub-town/1``:

- ``grids``: a GeoJSON FeatureCollection: 21 first-level grids (一级网格,
  ``G01``..``G21``, level 1, parent null), then 179 second-level grids
  (二级网格, ``G01-01``..). Each Polygon has one closed counter-clockwise ring.
  The first-level grids tile the town and the children of each first-level
  grid tile it exactly: neighbours carry identical vertices along every shared
  edge, so there are no overlaps and no holes.
- ``roads``: a FeatureCollection of LineStrings (class main/secondary/local).
  Roads touch only at identical vertices and, joined at identical
  coordinates, form one connected network reaching into every first-level grid.
- ``devices``: environment, safety and traffic sensors, each strictly inside
  (at least ``MIN_MARGIN_M`` from the edge of) its level-2 ``grid``.
- ``units``: enforcement squads, police patrols and grid workers, each
  starting on a road vertex strictly inside its level-2 ``home_grid``.

Coordinates are [lon, lat] (WGS84) rounded to 6 decimals (about 0.1 m).
Geometry is built in metres on a local plane around the town centre.
Run ``python -m simulators.demo_town --out simulators/data/xuxiake.json``.

Modules: ``plane`` (projection, extent), ``grids``, ``roads``, ``sensors`` (devices),
``roster`` (units) and ``document`` (``generate``, ``to_json``, the command line).
"""
