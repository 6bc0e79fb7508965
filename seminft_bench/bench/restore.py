"""Text-guided restoration of old photos (paper §4.3, Fig. 4 and 11): a VLM says what the faded or
black-and-white photo's colours probably were, as a text-to-image prompt; a text-to-image model
paints a photorealistic reference from it at the photo's aspect ratio; a preset-transfer method
(SemiNFT, ``ours``, or any registered one) moves that reference's colours onto the photo.

Every stage is pluggable (the VLM is any judge client, with the judges' cache, retries and costs;
the text-to-image model any local diffusers pipeline; the method any of the registry) and every
intermediate is kept, so a rerun redoes only what is missing::

    OUT/NAME/settings.json   what made them (a folder made otherwise is refused, not mixed)
    OUT/NAME/prompt.txt      the VLM's prompt
    OUT/NAME/reference.png   the reference used (with several candidates: reference-K.png, result-K.png
    OUT/NAME/result.png      and scores.json, the reward model's score of each, the best one kept)
    OUT/contact_sheet.png    source → reference → result, a row per photo
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from seminft_bench.bench.methods import Method
from seminft_bench.bench.samples import BenchSet, Sample
from seminft_bench.errors import MissingWeightsError
from seminft_bench.fileio import atomic_write_text
from seminft_bench.imaging import ImageReadError, image_grid, read_image, write_png
from seminft_bench.vlm.judge import Judge, Pair
from seminft_bench.vlm.writer import Writer

DEFAULT_TEXT_TO_IMAGE = "black-forest-labs/FLUX.1-dev"
TINY_PREFIX = "tiny:"
TEXT_TO_IMAGE_AREA = 1024 * 1024
"""FLUX.1-dev's native area; the reference keeps the photo's aspect ratio at it."""
SIDE_MULTIPLE = 16  # FLUX: 8× VAE and 2×2 packing


@dataclass
class RestoreSettings:
    """How references are painted: the text-to-image model's steps, guidance and area, and the candidates."""

    steps: int = 28
    guidance_scale: float = 3.5
    area: int = TEXT_TO_IMAGE_AREA
    references: int = 1
    """Candidates painted per photo; above 1 the reward model keeps the one whose transfer it scores best."""
    seed: int = 0


@dataclass
class RestoreSummary:
    restored: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    """Inputs that could not be read, and why."""
    failed: dict[str, str] = field(default_factory=dict)
    """Photos a stage failed for (the VLM's prompt, the reward's choice, painting or transfer), and why; a
    rerun tries them again."""
    contact_sheet: Path | None = None


def load_text_to_image(model: str = DEFAULT_TEXT_TO_IMAGE, *, device: str | None = None, dtype=None):
    """A diffusers text-to-image pipeline from local files (a folder, or a hub id in the Hugging Face cache;
    its class from ``model_index.json``), or ``tiny:SEED``: a tiny random FLUX pipeline for tests and demos.
    Raises `MissingWeightsError` naming what is missing."""
    import torch
    from diffusers import DiffusionPipeline

    from seminft_bench.model.components import locate_weights

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model.startswith(TINY_PREFIX):
        return tiny_text_to_image(int(model.removeprefix(TINY_PREFIX))).to(device)
    folder = locate_weights(model)
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as error:
        raise MissingWeightsError(f"text-to-image model {model!r} at {folder} does not load: {error}") from error
    return pipe.to(device)


def tiny_text_to_image(seed: int = 0):
    """FLUX's text-to-image pipeline on tiny random parts (the tiny transformer and VAE of the model code,
    2-layer CLIP and T5 encoders with a byte-level BPE tokenizer trained here): it runs, it paints noise."""
    import torch
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from seminft_bench.model.components import TINY_TRANSFORMER, tiny_components

    width = TINY_TRANSFORMER["joint_attention_dim"]
    components = tiny_components(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_tokenizer, t5_tokenizer = _tiny_tokenizer(77), _tiny_tokenizer(64)
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(clip_tokenizer), hidden_size=TINY_TRANSFORMER["pooled_projection_dim"], intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, pad_token_id=0, bos_token_id=1,
            eos_token_id=2,
        ))  # fmt: skip
        t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=width, d_ff=64, d_kv=8, num_layers=2,
                                     num_heads=2, pad_token_id=0, eos_token_id=2))  # fmt: skip
    return FluxPipeline(
        scheduler=components.scheduler, vae=components.vae, text_encoder=clip.eval(), tokenizer=clip_tokenizer,
        text_encoder_2=t5.eval(), tokenizer_2=t5_tokenizer, transformer=components.transformer,
    )


def _tiny_tokenizer(max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["a photorealistic colour photograph of the same scene, warm light"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=max_length,
    )


def reference_size(photo: tuple[int, int], area: int) -> tuple[int, int]:
    """(width, height) with ``area`` pixels, the photo's aspect ratio and sides in multiples of 16."""
    width, height = photo
    scale = (area / (width * height)) ** 0.5
    return tuple(max(SIDE_MULTIPLE, round(side * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE) for side in (width, height))


def restore_photos(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    method: Method,
    text_to_image,
    writer: Writer | None = None,
    prompt: str | None = None,
    reward: Judge | None = None,
    settings: RestoreSettings = RestoreSettings(),
    smoke: bool = False,
    log=print,
) -> RestoreSummary:
    """Restore each photo of ``sources`` into ``out`` (see the module docstring), skipping unreadable files.

    The prompt comes from ``writer`` (a VLM) or is ``prompt`` for every photo; ``reward`` (a judge in
    reward mode) picks among ``settings.references`` > 1 candidates. ``smoke`` labels the contact sheet a
    smoke run (tiny random models: it shows the flow runs, not what the method can do).
    """
    if (writer is None) == (prompt is None):
        raise ValueError("give a writer (the VLM that writes each prompt) or one prompt for every photo, not both")
    if settings.references > 1 and reward is None:
        raise ValueError(f"{settings.references} candidate references need a reward model to choose among them")
    out = Path(out)
    photos, summary = _readable(sources), RestoreSummary([])
    summary.skipped = {name: error for name, error in photos.items() if isinstance(error, str)}
    photos = {name: photo for name, photo in photos.items() if not isinstance(photo, str)}
    for name, error in summary.skipped.items():
        log(f"skipped {name}: {error}")
    method.prepare(BenchSet("restore", [Sample(name, photo, photo) for name, photo in photos.items()]))
    made_with = json.loads(json.dumps({
        "prompt": writer.settings() if writer else {"fixed": prompt},
        "text_to_image": {"class": type(text_to_image).__name__, "model": text_to_image.config.get("_name_or_path")},
        "settings": asdict(settings), "method": method.settings(),
    }, default=str))  # fmt: skip
    _refuse_folders_made_otherwise(out, photos, made_with)
    rows = []
    for name, photo in photos.items():
        folder = out / name
        atomic_write_text(folder / "settings.json", json.dumps(made_with, indent=2, sort_keys=True))
        try:
            reference, result = _restore_one(name, photo, folder, method, text_to_image, writer, prompt, reward, settings)
        except Exception as error:  # one photo's failure is recorded; the others go on, and a rerun retries it
            summary.failed[name] = f"{type(error).__name__}: {error}"
            continue
        rows += [photo, reference, result]
        summary.restored.append(name)
    if rows:
        tail = " (smoke run, tiny models)" if smoke else ""
        labels = [label for name in summary.restored for label in (f"{name}: old photo", "generated reference" + tail, "restored" + tail)]
        summary.contact_sheet = write_png(image_grid(rows, labels, ncols=3, cell_size=(320, 320)), out / "contact_sheet.png")
    return summary


def _refuse_folders_made_otherwise(out: Path, photos, made_with: dict) -> None:
    """A folder made with other settings would mix its kept stages with these: refuse it before any work."""
    for name in photos:
        kept = out / name / "settings.json"
        if kept.is_file() and json.loads(kept.read_text(encoding="utf-8")) != made_with:
            raise ValueError(f"{out / name} was made with other settings ({kept}); use another --out or remove it")


def _restore_one(name, photo, folder, method, text_to_image, writer, prompt, reward, settings) -> tuple[Image.Image, Image.Image]:
    """The photo's (reference, result): prompt, candidates, their transfers and, with several, the reward's choice."""
    if prompt is not None:
        atomic_write_text(folder / "prompt.txt", prompt)
    text = prompt or _prompt(writer, name, photo, folder)
    candidates = [_candidate(text_to_image, text, photo, folder, k, settings) for k in range(settings.references)]
    results = [_result(method, photo, reference, folder, k, settings.references) for k, reference in enumerate(candidates)]
    if settings.references == 1:
        return candidates[0], results[0]
    best = _best(reward, name, candidates, results, folder)
    write_png(candidates[best], folder / "reference.png")
    write_png(results[best], folder / "result.png")
    return candidates[best], results[best]


def _readable(sources: Sequence[str | os.PathLike]) -> dict[str, Image.Image | str]:
    """Each source by its file stem: the image, or why it cannot be read."""
    photos: dict[str, Image.Image | str] = {}
    for source in map(Path, sources):
        if source.stem in photos:
            raise ValueError(f"two sources are named {source.stem!r}: their folders would collide")
        try:
            photos[source.stem] = read_image(source)
        except (ImageReadError, OSError) as error:
            photos[source.stem] = str(error)
    return photos


class StageFailed(RuntimeError):
    """A stage that could not be done for one photo (its VLM reply, or the reward model's choice)."""


def _prompt(writer: Writer, name: str, photo: Image.Image, folder: Path) -> str:
    """The photo's prompt: the one kept from an earlier run, or the VLM's."""
    kept = folder / "prompt.txt"
    if kept.is_file():
        return kept.read_text(encoding="utf-8")
    written = writer.write(name, [photo])
    if written.text is None:
        raise StageFailed(f"the VLM wrote no prompt: {written.error}")
    atomic_write_text(kept, written.text)
    return written.text


def _numbered(folder: Path, stem: str, k: int, count: int) -> Path:
    return folder / (f"{stem}.png" if count == 1 else f"{stem}-{k + 1}.png")


def _candidate(text_to_image, prompt: str, photo: Image.Image, folder: Path, k: int, settings: RestoreSettings) -> Image.Image:
    import torch

    path = _numbered(folder, "reference", k, settings.references)
    if path.is_file():
        return read_image(path)
    width, height = reference_size(photo.size, settings.area)
    image = text_to_image(
        prompt=prompt, width=width, height=height, num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale, generator=torch.Generator("cpu").manual_seed(settings.seed + k),
    ).images[0]
    write_png(image, path)
    return image


def _result(method: Method, photo: Image.Image, reference: Image.Image, folder: Path, k: int, count: int) -> Image.Image:
    path = _numbered(folder, "result", k, count)
    if path.is_file():
        return read_image(path)
    result = method.transfer(photo, reference)
    write_png(result, path)
    return result


def _best(reward: Judge, name: str, candidates, results, folder: Path) -> int:
    """The candidate whose transfer the reward model scores highest (its colours best carried over)."""
    judged = reward.score_pairs([Pair(f"{name}/{k + 1}", c, r) for k, (c, r) in enumerate(zip(candidates, results))])
    scores = [j.score for j in judged]
    atomic_write_text(folder / "scores.json", json.dumps(
        {"reward": reward.name, "candidates": [{"reference": f"reference-{k + 1}.png", "score": j.score, "error": j.error}
                                               for k, j in enumerate(judged)]}, indent=2))  # fmt: skip
    valid = [k for k, score in enumerate(scores) if score is not None]
    if not valid:
        raise StageFailed("the reward model scored no candidate; see scores.json")
    return max(valid, key=lambda k: scores[k])
