"""Write the spec-derived hardware profiles:
``python -m qtsim.calibration.fit.spec_profiles [OUTDIR]``.

One TOML per row of ``data/reference/gpu_specs.csv``: datasheet facts plus the priors of
:mod:`qtsim.profiles.priors` (a maintenance command: the shipped ``hardware_profiles/`` are its
output; ``python -m qtsim.calibration.fit.public_refit`` refits the priors first and runs it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qtsim.profiles.hardware import write_profile
from qtsim.profiles.priors import public_fit, spec_profile, spec_rows


def write_spec_profiles(outdir: str | Path) -> list[Path]:
    fit = public_fit()
    return [write_profile(spec_profile(r, fit), Path(outdir) / f"{r['gpu']}.toml") for r in spec_rows()]


def main(argv=None) -> None:
    """``python -m qtsim.calibration.fit.spec_profiles [OUTDIR]``: regenerate the spec profiles."""
    ap = argparse.ArgumentParser(
        prog="python -m qtsim.calibration.fit.spec_profiles",
        description="Write the spec-derived hardware profiles (one TOML per row of "
                    "data/reference/gpu_specs.csv) into OUTDIR.")
    ap.add_argument("outdir", nargs="?", default="hardware_profiles",
                    help="folder to write (default: hardware_profiles)")
    args = ap.parse_args(argv)
    for f in write_spec_profiles(args.outdir):
        print(f)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    main(sys.argv[1:])
