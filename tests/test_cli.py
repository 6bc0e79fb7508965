"""The command-line faces: presets list/export and env, through Typer's runner."""

import numpy as np
import pytest
from typer.testing import CliRunner

from seminft_bench.cli import bench, data, train
from seminft_bench.imaging import read_image, to_array
from seminft_bench.presets import builtin_presets, read_lut

runner = CliRunner()


def test_presets_list_names_every_builtin():
    result = runner.invoke(data.app, ["presets", "list"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.strip().splitlines()]
    assert listed == [p.name for p in builtin_presets()]


@pytest.mark.parametrize("app", [data.app, train.app, bench.app])
def test_env_reports_versions_and_device(app):
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "device" in result.output


def test_presets_export_writes_cubes_and_contact_sheet(tmp_path):
    photo = tmp_path / "photo.png"
    from seminft_bench.imaging import write_png
    from skimage import data as skdata

    write_png(skdata.coffee(), photo)
    out = tmp_path / "presets"
    result = runner.invoke(data.app, ["presets", "export", "--out", str(out), "--photo", str(photo), "--lut-size", "17"])
    assert result.exit_code == 0, result.output

    presets = builtin_presets()
    cubes = sorted(out.glob("*.cube"))
    assert [c.stem for c in cubes] == sorted(p.name for p in presets)
    # Every exported cube reads back as the preset that produced it.
    for preset in presets[:5]:
        lut = read_lut(out / f"{preset.name}.cube")
        np.testing.assert_allclose(lut.table, preset.to_lut(17).table, atol=1e-6)

    sheet = to_array(read_image(out / "contact_sheet.png"))
    assert sheet.shape[0] > 4 * 64 and sheet.shape[1] > 4 * 64
    # Cells are 256×256 with a 24-pixel label strip, 8 per row: "original" first, then each preset.
    original, graded = sheet[:256, :256].astype(int), sheet[:256, 256:512].astype(int)
    assert np.abs(original - graded).mean() > 1
    label_strip = sheet[256:280, :256]
    assert label_strip.min() < 128  # the name is written under the photo


def test_presets_export_rejects_unreadable_photo(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    result = runner.invoke(data.app, ["presets", "export", "--out", str(tmp_path / "o"), "--photo", str(bad)])
    assert result.exit_code != 0
    assert "bad.jpg" in str(result.exception) + result.output
