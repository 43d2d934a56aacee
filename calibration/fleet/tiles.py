"""Big ``qtsim simulate`` grids chunked over Ray workers: tiles of the model axis evaluated
apart and assembled into one surface, identical to the single-process one.
"""

from __future__ import annotations

import numpy as np

from qtsim.calibration.fleet.slots import require_ray
from qtsim.model.workload import Workload
from qtsim.simulate.surface import simulate


def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if not size or size >= n else int(size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]



def simulate_tiles(profiles, models=(), sizes=None, batch=(1, 8, 64), *, family=None,
                   chunk_models: int | None = None, chunk_batches: int | None = None,
                   **kw) -> list[dict]:
    """The keyword arguments of one :func:`qtsim.simulate.surface.simulate` call per tile of the
    (model, batch) grid: models (named, then the synthetic ``sizes`` of ``family``) cut into
    chunks of ``chunk_models``, batches into chunks of ``chunk_batches``. ``family`` is pinned
    to what one machine would use (the first model), so N* is searched along the same family
    in every tile."""
    models = list(models)
    family = family or (models[0] if models else None)
    sizes_arr = None if sizes is None else np.atleast_1d(np.asarray(sizes, float))
    n_models = len(models) + (0 if sizes_arr is None else sizes_arr.size)
    b = np.atleast_1d(np.asarray(batch, float))
    tiles = []
    for ms in _chunks(n_models, chunk_models):
        idx = np.arange(n_models)[ms]
        named = [models[i] for i in idx if i < len(models)]
        syn = [i - len(models) for i in idx if i >= len(models)]
        for bs in _chunks(b.size, chunk_batches):
            tiles.append({"profiles": list(profiles), "models": named,
                          "sizes": sizes_arr[syn] if syn else None, "batch": b[bs],
                          "family": family, **kw,
                          "_model_slice": (ms.start, ms.stop)})
    return tiles



def _simulate_tile(tile: dict):
    kw = {k: v for k, v in tile.items() if not k.startswith("_")}
    w = {k: kw.pop(k) for k in ("batch", "new_tokens", "prompt_tokens") if k in kw}
    return simulate(workload=Workload(**w), **kw)



def assemble(tiles: list[dict], surfaces: list):
    """One surface Dataset from the tiles' surfaces: concatenated along batch within each chunk
    of models, then along model (tiles come model chunk by model chunk, as
    :func:`simulate_tiles` makes them). Per-model and per-batch quantities are the same in
    every tile that shares those indices; they are taken from the first."""
    import xarray as xr

    rows: dict[tuple, list] = {}
    for tile, s in zip(tiles, surfaces, strict=True):
        rows.setdefault(tuple(tile["_model_slice"]), []).append(s)
    opts = {"data_vars": "minimal", "coords": "minimal", "compat": "override", "join": "exact",
            "combine_attrs": "override"}
    out = xr.combine_nested(list(rows.values()), concat_dim=["model", "batch"], **opts)
    return out[list(surfaces[0].variables)]  # one machine's order: coordinates first



def fleet_simulate(profiles, models=(), sizes=None, batch=(1, 8, 64), *, family=None,
                   chunk_models: int | None = None, chunk_batches: int | None = None,
                   use_ray: bool = True, **kw):
    """:func:`qtsim.simulate.surface.simulate` over a large grid, one Ray task per tile (see
    :func:`simulate_tiles`), assembled into the same Dataset one machine computes: draws are
    seeded per GPU profile (``Simulator(profile, seed)``) and per model family, never per
    tile, and every value is computed element-wise, so the result is bit for bit the same.
    ``use_ray=False`` runs the tiles in this process (for checking)."""
    tiles = simulate_tiles(profiles, models, sizes, batch, family=family,
                           chunk_models=chunk_models, chunk_batches=chunk_batches, **kw)
    if use_ray:
        ray = require_ray()
        remote = ray.remote(num_cpus=1)(_simulate_tile)
        surfaces = ray.get([remote.remote(t) for t in tiles])
    else:
        surfaces = [_simulate_tile(t) for t in tiles]
    return assemble(tiles, surfaces)
