"""``seminft-data``: colour presets and dataset construction."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seminft_bench.cli.common import new_app

app = new_app("Build preset-transfer datasets (paper §3.5) and manage colour presets.")
presets_app = typer.Typer(help="The built-in preset library.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")


@presets_app.command("list")
def presets_list() -> None:
    """Print every built-in preset with the parameters it changes."""
    from seminft_bench.presets import Preset, builtin_presets

    defaults = Preset().to_dict()
    for preset in builtin_presets():
        changed = [key for key, value in preset.to_dict().items() if key != "name" and value != defaults[key]]
        typer.echo(f"{preset.name:<24} {', '.join(changed)}")


@presets_app.command("export")
def presets_export(
    out: Path = typer.Option(..., "--out", help="Folder for the .cube files and contact_sheet.png."),
    photo: Optional[Path] = typer.Option(None, help="Photo for the contact sheet (default: a bundled sample)."),
    lut_size: int = typer.Option(33, help="Lattice points per axis of each exported cube."),
) -> None:
    """Write every built-in preset as a .cube file plus a contact sheet."""
    from seminft_bench.presets import builtin_presets
    from seminft_bench.presets.export import export_presets, preview_photo

    cubes, sheet = export_presets(builtin_presets(), out, photo=preview_photo(photo), lut_size=lut_size)
    typer.echo(f"wrote {len(cubes)} presets to {out}")
    typer.echo(f"contact sheet: {sheet}")
