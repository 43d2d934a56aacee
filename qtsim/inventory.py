"""PROVISIONAL reader (replaced by the tracer's module)."""
import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def load_inventory() -> dict:
    return json.loads((resources.files("qtsim.data.reference") / "op_inventory.json").read_text())
