"""setup.cfg lists its packages by name: a new package missing there would be left out of
a wheel (and of a non-editable install) while every test of the source tree passes."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: installed package name -> its folder (setup.cfg's package_dir)
FOLDERS = {"pyro_aevb": ROOT / "pyro_aevb", "pyro_aevb.models": ROOT / "models",
           "pyro_aevb.guides": ROOT / "guides"}  # fmt: skip


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if name == "pyro_aevb" and parts and parts[0] in ("models", "guides"):
                continue
            found.add(".".join([name, *parts]))
    return found


def test_setup_cfg_lists_every_package():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    missing = sorted(_packages_on_disk() - listed)
    assert not missing, f"add these packages to setup.cfg [options] packages: {missing}"
    gone = sorted(listed - _packages_on_disk())
    assert not gone, f"setup.cfg lists packages that do not exist: {gone}"
