"""The GPU registry (qtsim/profiles/gpus.py): one table of names, aliases and CUDA device strings
that the spec table, the shipped profiles and `qtsim calibrate` all agree with."""

import csv
import tomllib
from importlib import resources

import pytest

from qtsim.calibration.calibrate import check_gpu_name
from qtsim.calibration.probes.power_states import _check_requested
from qtsim.errors import QtsimError, UnknownNameError
from qtsim.profiles import gpus
from qtsim.profiles.hardware import load_profile


def _shipped() -> dict[str, dict]:
    """[hardware] of every shipped profile, by file stem."""
    folder = resources.files("qtsim.hardware_profiles")
    return {f.name[:-5]: tomllib.loads(f.read_text())["hardware"]
            for f in folder.iterdir() if f.name.endswith(".toml")}


def _spec_names() -> list[str]:
    text = (resources.files("qtsim.data.reference") / "gpu_specs.csv").read_text()
    return [r["gpu"] for r in csv.DictReader(text.splitlines())]


def test_spec_table_and_shipped_profiles_are_registry_names():
    shipped = _shipped()
    assert sorted(_spec_names()) == sorted(shipped)  # one shipped profile per spec row
    assert [n for n in shipped if n not in gpus.BY_NAME] == []
    for name, hw in shipped.items():
        assert hw["name"] == name
        assert hw.get("aliases", []) == gpus.aliases(name), name


def test_registry_is_consistent():
    names = [g.name for g in gpus.GPUS]
    assert len(names) == len(set(names))
    aliases = [a for g in gpus.GPUS for a in g.aliases]
    assert len(aliases) == len(set(aliases)), "an alias names one GPU"
    assert not set(aliases) & set(names)
    for fam, members in gpus.FAMILIES.items():
        assert members and set(members) <= set(names), fam
    for g in gpus.GPUS:  # each example device string finds its own entry, in registry order
        assert gpus.normalise_gpu_name(g.example) == g.name
        assert gpus.canonical_name(g.name.upper()) == g.name
        assert all(gpus.canonical_name(a) == g.name for a in g.aliases)


@pytest.mark.parametrize("device_string, name", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200-nvl"),
    ("NVIDIA GH200 480GB", "gh200"),
    ("NVIDIA GB200", "gb200"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA B200", "b200"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "rtx-pro-6000-blackwell"),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "rtx-pro-6000-blackwell"),
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "rtx-pro-6000-blackwell-max-q"),
    ("Tesla T4", "t4"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 4090 D", "rtx-4090d"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ("NVIDIA GeForce RTX 3090", "geforce-rtx-3090"),  # unknown: a slug, never another GPU
])
def test_device_strings(device_string, name):
    assert gpus.normalise_gpu_name(device_string) == name


def test_families_and_aliases_when_measuring():
    assert gpus.accepted_names("h100") == ("h100-sxm", "h100-pcie", "h100-nvl")  # any H100
    assert gpus.accepted_names("H100-SXM") == ("h100-sxm",)
    assert gpus.accepted_names("a100") == ("a100-80gb", "a100-40gb")
    assert gpus.accepted_names("h200") == ("h200", "h200-nvl")
    assert gpus.accepted_names("h200-sxm") == ("h200",)
    assert gpus.accepted_names("4090") == ("rtx-4090",)
    assert gpus.accepted_names("RTX-6000-ADA") == ("rtx-6000-ada",)
    assert load_profile("h100").name == "h100-sxm"  # planning: the alias, one profile


@pytest.mark.parametrize("name", sorted(_shipped()))
def test_every_shipped_profile_can_be_calibrated_by_its_name(name, monkeypatch):
    """`qtsim calibrate --gpu NAME` on a machine with that GPU: the name passes the check, and
    the device CUDA (or NVML, for the deep-idle windows) reports is accepted as it, under every
    alias too. The CUDA and NVML answers are fakes; nothing is measured."""
    example = gpus.BY_NAME[name].example
    for asked in (name, *gpus.aliases(name)):
        check_gpu_name(asked)
        nvml = type("FakeNvml", (), {"info": lambda self: {"nvml_name": example}})()
        assert _check_requested(nvml, asked, 0) == name
    torch = pytest.importorskip("torch")
    from qtsim.calibration.measure.device import detect_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: example)
    dev = detect_device(name)
    assert (dev.backend, dev.name, dev.device_string) == ("cuda", name, example)
    other = next(g for g in gpus.GPUS if g.name not in gpus.accepted_names(name))
    with pytest.raises(QtsimError, match=f"use --gpu {name}"):
        detect_device(other.name)


def test_unknown_gpu_is_refused_before_looking_for_cuda():
    with pytest.raises(UnknownNameError, match="unknown GPU 'rtx-9999'"):
        check_gpu_name("rtx-9999")
