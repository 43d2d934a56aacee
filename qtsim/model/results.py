"""Typed results of the physical model: what one batch of queries costs, field by field.

:class:`QueryResult` is what :func:`qtsim.model.physical.query` returns and
:class:`Evaluation` what :meth:`qtsim.simulate.simulator.Simulator.evaluate` returns (the query
plus its peak memory). Each field carries its unit and meaning in its metadata, so the schema
lives here once: :func:`field_table` lists it for the documentation, and a misspelt name fails
(``q.j_per_qeury`` is an AttributeError, ``q["j_per_qeury"]`` a KeyError) instead of creating
a new key. Fields are arrays that broadcast like the workload and the parameters (a leading
axis of Monte-Carlo draws where the parameters have one).

Both are read-only mappings too (``q["j_per_query"]``, ``q.keys()``, ``{**q}``), so code that
iterates over quantities by name (surfaces, tables) keeps doing so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def quantity(unit: str, description: str) -> Any:
    """A result field with its unit and meaning (dataclass field metadata)."""
    return field(metadata={"unit": unit, "description": description})


class _Fields(Mapping):
    """The read-only mapping view of a result dataclass: its fields by name, in order."""

    def __getitem__(self, name: str):
        if name not in self._names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_field_names")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls))
            cls._field_names = names
        return names

    def replace(self, **changes):
        """A copy with ``changes`` (field name -> new value)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class QueryResult(_Fields):
    """Latency, throughput and energy of one batch of queries (prefill + K - 1 decode steps),
    physical model (:func:`qtsim.model.physical.query`)."""

    step_s: Any = quantity("s", "mean decode step (one token for every sequence of the batch)")
    host_s: Any = quantity("s", "the decode step's host timeline alone (issuing its operations)")
    device_s: Any = quantity("s", "the decode step's device timeline alone (stretched where the "
                                  "board limit lowers clocks)")
    prefill_s: Any = quantity("s", "the prompt's prefill and first token (one generate call)")
    latency_s: Any = quantity("s", "the whole batch: prefill + (K - 1) decode steps")
    tok_per_s: Any = quantity("tokens/s", "new tokens per second, all sequences of the batch")
    j_per_query: Any = quantity("J", "energy per query, power states (what an energy counter "
                                     "reads: awake power over the step plus the work's energy)")
    j_per_query_hli: Any = quantity("J", "energy per query by the paper's HLI: TDP x latency / B")
    avg_power_w: Any = quantity("W", "average board power over the batch")
    step_j: Any = quantity("J", "energy of one decode step, all sequences")
    busy_frac: Any = quantity("1", "share of the decode step the device works")
    busy_w: Any = quantity("W", "board power while the device works")
    awake_frac: Any = quantity("1", "share of the decode step the device waits for the host "
                                    "(awake, clocks up)")
    awake_w: Any = quantity("W", "board power while it waits (the awake state)")
    cap_stretch: Any = quantity("1", "device slow-down from the board power limit (1: full "
                                     "clocks)")


@dataclass(frozen=True, eq=False)
class Evaluation(QueryResult):
    """:class:`QueryResult` and the peak memory of the same workload
    (:meth:`qtsim.simulate.simulator.Simulator.evaluate`)."""

    peak_bytes: Any = quantity("bytes", "peak device memory: weights with their scales, the full "
                                        "KV cache, dequantisation workspace, runtime overhead")
    fits: Any = quantity("bool", "the peak memory is within the device's")


def field_table(cls) -> list[dict[str, str]]:
    """``[{"name", "unit", "description"}]`` of a result dataclass's fields, in order."""
    return [{"name": f.name, "unit": f.metadata.get("unit", ""),
             "description": f.metadata.get("description", "")} for f in dataclasses.fields(cls)]
