"""The `mimkit-faces` command: face-forgery detection (GM-DF) and face data, on the core's configuration system.

Each command is a typed function (core.config): --config FILE, --print_config and dotted keys everywhere.
"""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

from mimkit.core.cli import positional
from mimkit.core.config import Command, Tool
from mimkit.core.errors import ConfigError


# ------------------------------------------------------------------------------------------ recipes / synthetic
def recipe_files() -> dict[str, object]:
    """The packaged faces recipes, by name (found through importlib.resources, so they work installed)."""
    folder = resources.files("mimkit.faces").joinpath("recipes")
    if not folder.is_dir():
        return {}
    return {entry.name[:-5]: entry for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def recipes(name: str | None = None) -> None:
    """The faces methods' recipes, each value annotated with its source. Print one, edit it, pass it as
    `mimkit-faces train-detector --config FILE`.

    Args:
        name: the recipe to print (default: list them)
    """
    found = recipe_files()
    if name:
        if name not in found:
            raise ConfigError(f"no recipe {name!r}; available: {', '.join(found) or '(none)'}")
        print(found[name].read_text(), end="")
        return
    for key, entry in found.items():
        first = next((line.lstrip("# ").strip() for line in entry.read_text().splitlines() if line.startswith("#")), "")
        print(f"{key:16s} {first}")
    print("\nPrint one with `mimkit-faces recipes NAME`, save it, and train with "
          "`mimkit-faces train-detector --config FILE ...`.")


def synthetic(out: str, kind: list[Literal["colour", "swap", "blur", "noise"]] | None = None, size: int = 64,
              frames: int = 3, seed: int = 0) -> Path:
    """Write real faces that packages ship (scikit-image's LFW crops and astronaut, matplotlib's Grace Hopper)
    and self-blended forgeries of them, one folder per forgery kind in the real/ + fake/ layout
    (OUT/<kind>/{train,test}/{real,fake}/<video>/frame_<k>.png).

    Args:
        out: the folder to write
        kind: forgery kinds, one domain each (default: all four)
        size: face crop side in pixels
        frames: frames per "video" (small shifts of one face)
        seed: random seed of the forgeries and the train/test split
    """
    from .synthetic import FORGERY_KINDS, write_dataset

    root = write_dataset(out, kinds=kind or FORGERY_KINDS, size=size, frames=frames, seed=seed)
    print(f"wrote real faces and their forgeries ({', '.join(kind or FORGERY_KINDS)}) to {root}")
    return root


def build_tool() -> Tool:
    return Tool("mimkit-faces", "Face-forgery detection (GM-DF) and face data: FaceForensics++, Celeb-DF, DFDC, "
                "WildDeepfake, DFD and real/ + fake/ folders.", [
                    Command("recipes", recipes, "list the faces recipes, or print one", preprocess=positional("name")),
                    Command("synthetic", synthetic, "write real faces that packages ship and self-blended forgeries"),
                ], epilog="Each command has its own --help.")


def main(argv: Sequence[str] | None = None) -> int:
    return build_tool().run(argv)


if __name__ == "__main__":
    sys.exit(main())
