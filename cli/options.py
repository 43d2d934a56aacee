"""Options shared by several commands."""

from __future__ import annotations

import click

from qtsim.precision import PRECISIONS

FORMATS = click.Choice(["text", "json", "csv"], case_sensitive=False)


def split_list(value: str, name: str) -> list[str]:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"{name} needs at least one value")
    return items


def int_list(value: str, name: str, minimum: int = 1) -> list[int]:
    out = []
    for v in split_list(value, name):
        try:
            x = int(v)
        except ValueError:
            raise click.BadParameter(f"{name}: {v!r} is not an integer") from None
        if x < minimum:
            raise click.BadParameter(f"{name}: {x} is below {minimum}")
        out.append(x)
    return out


def precision_list(value: str) -> list[str]:
    out = []
    for v in split_list(value, "--precision"):
        if v.lower() not in PRECISIONS:
            raise click.BadParameter(f"unknown precision {v!r} (choose from {', '.join(PRECISIONS)})")
        out.append(v.lower())
    return out


def profile_options(f):
    f = click.option("--profile", "profile_path", type=click.Path(dir_okay=False),
                     help="Load this profile TOML instead of looking --gpu up.")(f)
    f = click.option("--gpu", help="Hardware profile name or alias (see `qtsim profiles list`).")(f)
    return f
