"""``seminft-data``: colour presets and dataset construction."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from seminft_bench.cli.common import fail, new_app

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
    from seminft_bench.imaging import ImageReadError
    from seminft_bench.presets import builtin_presets
    from seminft_bench.presets.export import export_presets, preview_photo

    try:
        picture = preview_photo(photo)
    except ImageReadError as error:
        raise typer.BadParameter(str(error), param_hint="--photo") from error
    cubes, sheet = export_presets(builtin_presets(), out, photo=picture, lut_size=lut_size)
    typer.echo(f"wrote {len(cubes)} presets to {out}")
    typer.echo(f"contact sheet: {sheet}")


@app.command("build-coldstart")
def build_coldstart(
    videos: Path = typer.Option(..., help="Folder of videos, a text file listing them, or an Open-Sora-Plan JSON."),
    out: Path = typer.Option(..., help="Output dataset folder (resumes a killed build with the same settings)."),
    presets: str = typer.Option("builtin", help="builtin, random, or a folder of .cube/Hald files."),
    num_samples: int = typer.Option(1000, help="Quadruplets to make."),
    pairs_per_video: int = typer.Option(1, help="Frame pairs drawn per video."),
    min_gap: float = typer.Option(1.0, help="Seconds between frames A and B, at least."),
    resolution: int = typer.Option(512, help="Short side of every image (a multiple of 16)."),
    seed: int = typer.Option(0),
    eval_count: int = typer.Option(50, help="Representative test samples (paper: 50)."),
    editor: str = typer.Option("none", help="none or qwen-image-edit: add/remove an object in frame B."),
    edit_count: int = typer.Option(200, help="References to edit (paper: 200)."),
    editor_model: str = typer.Option("Qwen/Qwen-Image-Edit", help="Editor model id (local HF cache) or folder."),
    editor_steps: int = typer.Option(50, help="Denoising steps per edit."),
    video_root: Optional[Path] = typer.Option(None, help="Folder that relative paths in --videos refer to."),
    license: str = typer.Option("other", help="Licence recorded in the dataset card."),
    workers: int = typer.Option(1, help="Worker processes (or Ray CPUs)."),
    executor: str = typer.Option("local", help="local or ray."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local Ray)."),
) -> None:
    """Build cold-start quadruplets (source, reference, target, prompt) from video frames and presets."""
    from seminft_bench.pipelines.coldstart import ColdStartConfig
    from seminft_bench.pipelines.coldstart import build_coldstart as build

    config = ColdStartConfig(
        videos=str(videos), out=str(out), presets=presets, num_samples=num_samples,
        pairs_per_video=pairs_per_video, min_gap=min_gap, resolution=resolution, seed=seed,
        eval_count=eval_count, editor=editor, edit_count=edit_count, editor_model=editor_model, editor_steps=editor_steps,
        video_root=None if video_root is None else str(video_root), license=license,
    )
    from seminft_bench.errors import MissingWeightsError
    from seminft_bench.fileio import FolderLocked

    try:
        summary = build(config, workers=workers, executor=executor, ray_address=ray_address)
    except (ValueError, MissingWeightsError, FolderLocked) as error:
        fail(error)
    _report(out, summary.counts, summary.rejections, f"{summary.edited} edited references")


def _report(out: Path, counts: dict[str, int], rejections: Counter, detail: str) -> None:
    """What a build wrote and what it turned down, by reason."""
    splits = ", ".join(f"{split}: {n}" for split, n in counts.items())
    typer.echo(f"wrote {out} ({splits}; {detail})")
    for reason, n in rejections.most_common():
        typer.echo(f"  rejected {n:>5} × {reason}")


@app.command("push")
def push(
    folder: Path = typer.Argument(..., help="A dataset folder written by a build command."),
    repo_id: str = typer.Option(..., help="USER/NAME on the Hugging Face Hub."),
    private: bool = typer.Option(False, help="Create the repository as private."),
) -> None:
    """Upload a built dataset and its card to the Hugging Face Hub (token from HF_TOKEN or the HF login)."""
    from seminft_bench.pipelines.export import push_dataset

    try:
        url = push_dataset(folder, repo_id, private=private)
    except (ValueError, RuntimeError) as error:
        fail(error)
    typer.echo(f"pushed {folder} to {url}")



@app.command("build-rl")
def build_rl(
    images: Path = typer.Option(..., help="Source pool: a folder of photos or a CSV/Parquet listing (path, author, ...)."),
    out: Path = typer.Option(..., help="Output dataset folder."),
    references: Optional[Path] = typer.Option(None, help="Reference pool (default: the source pool)."),
    embeddings: Optional[Path] = typer.Option(None, help="Existing clip-retrieval output to use instead of a model."),
    clip_model: str = typer.Option("ViT-B-32", help="open_clip model name."),
    clip_pretrained: Optional[str] = typer.Option(
        "laion2b_s34b_b79k", help="Local weights file or an open_clip tag in the local cache; 'none' for random weights."
    ),
    num_pairs: Optional[int] = typer.Option(None, help="Pairs to keep at most (default: every reference that pairs)."),
    sim_min: float = typer.Option(0.5, help="Lowest CLIP cosine of a pair (related)."),
    sim_max: float = typer.Option(0.9, help="Highest CLIP cosine of a pair (not a near-duplicate)."),
    min_color_distance: float = typer.Option(0.15, help="Smallest colour-grade distance of a pair."),
    max_source_reuse: int = typer.Option(1, help="Times one source photo may be used."),
    min_side: int = typer.Option(256, help="Shorter side of a usable photo, at least."),
    eval_count: int = typer.Option(150, help="Representative test pairs (paper: 150)."),
    seed: int = typer.Option(0),
    license: str = typer.Option("other", help="Licence recorded in the dataset card."),
    workers: int = typer.Option(1, help="Processes that decode images (or Ray CPUs)."),
    executor: str = typer.Option("local", help="local, or ray to embed on a Ray cluster."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local Ray)."),
) -> None:
    """Build unpaired RL pairs: each reference with a related, differently graded source (CLIP + FAISS)."""
    from seminft_bench.errors import MissingWeightsError
    from seminft_bench.pipelines.rlpairs import RLConfig
    from seminft_bench.pipelines.rlpairs import build_rl as build

    config = RLConfig(
        images=str(images), out=str(out), references=None if references is None else str(references),
        embeddings=None if embeddings is None else str(embeddings), clip_model=clip_model,
        clip_pretrained=None if clip_pretrained in (None, "none") else clip_pretrained, num_pairs=num_pairs,
        sim_min=sim_min, sim_max=sim_max, min_color_distance=min_color_distance, max_source_reuse=max_source_reuse,
        min_side=min_side, eval_count=eval_count, seed=seed, license=license,
    )
    try:
        summary = build(config, workers=workers, executor=executor, ray_address=ray_address)
    except (ValueError, MissingWeightsError) as error:
        fail(error)
    _report(out, summary.counts, summary.rejections, f"index {summary.index}, recall@10 {summary.recall:.3f}")


@app.command("sample-photos")
def sample_photos(out: Path = typer.Option(..., help="Folder for the photos.")) -> None:
    """Write graded crops of scikit-image's sample photos: a small offline pool for the demo."""
    from seminft_bench.pipelines.samples import write_sample_photos

    typer.echo(f"wrote {len(write_sample_photos(out))} photos to {out}")


if __name__ == "__main__":  # python -m, as accelerate launch -m runs it
    from seminft_bench.quantlibs import keep_out

    keep_out()
    app()
