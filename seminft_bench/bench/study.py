"""User study (paper App. A, Fig. 5): a static questionnaire over a run's outputs, and its tally.

`make_study` turns a benchmark run folder into::

    STUDY/page/index.html    the questionnaire: plain HTML/CSS/JS, no network, relative links
    STUDY/page/images/       reference, source and one image per option for every item
    STUDY/key.json           which method is behind each option (private: never linked from the page)

Host or zip ``STUDY/page/`` alone, so participants cannot reach the key; they see options
labelled A, B, C… in an order shuffled per item, and images re-encoded without metadata and
at the source's size, so neither names nor resolution give a method away. Each participant
downloads a JSON file of answers; `tally` counts them into the paper's selection ratios.
The shuffle is reproducible from ``seed``: keep the seed private when participants could
run this code.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from seminft_bench.bench.stats import wilson_interval
from seminft_bench.fileio import atomic_write_bytes, atomic_write_text
from seminft_bench.imaging import read_image

OPTION_LABELS = string.ascii_uppercase
JPEG_QUALITY = 95
"""High enough, with full-resolution chroma, that the colours being judged are the method's, not the encoder's."""


@dataclass(frozen=True)
class Question:
    """``prompt`` is asked on the page; ``label`` titles the question in the tally."""

    id: str
    prompt: str
    label: str


QUESTIONS = (
    Question("q1", "Which result's colours and tone are closest to the reference's preset?",
             "closest to the reference's preset"),
    Question("q2", "Which result do you prefer overall?", "preferred overall"),
)


class StudyError(ValueError):
    """A run folder, study folder or answer file that cannot be used; the message names it."""


def make_study(
    run_dir: str | os.PathLike,
    methods: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    seed: int = 0,
    max_side: int = 768,
) -> Path:
    """Write the questionnaire for ``methods`` over the run in ``run_dir``; return the page's path.

    Items are the run's samples that have a reference and an output from every method
    (the others are listed under ``left_out`` in the key); ``limit`` picks that many of
    them at random. Images are shrunk to ``max_side`` pixels on the long side and written
    as JPEG. The same inputs and ``seed`` give the same study, study id included, so
    answers collected on an earlier copy stay valid.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    methods = list(methods)
    _check_methods(methods)
    if limit is not None and limit < 1:
        raise StudyError(f"limit must be at least 1, got {limit}")
    complete, left_out = _complete_samples(run_dir, methods)
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(complete):
        complete = sorted(rng.choice(complete, size=limit, replace=False).tolist())
    items = [
        {"item": str(i), "sample": sample,
         "options": dict(zip(OPTION_LABELS, (methods[j] for j in rng.permutation(len(methods)))))}
        for i, sample in enumerate(complete, start=1)
    ]
    study_id = hashlib.sha256(json.dumps([seed, items], sort_keys=True).encode()).hexdigest()[:12]

    _check_out_dir(out_dir)
    images_dir = out_dir / "page" / "images"
    sizes = {}
    for item in items:
        sizes |= _write_item_images(run_dir, item, images_dir, max_side)
    for stale in images_dir.iterdir():
        if stale.name not in sizes:
            stale.unlink()
    key = {"study": study_id, "seed": seed, "methods": methods, "run_dir": str(run_dir.resolve()),
           "items": items, "left_out": left_out}
    atomic_write_text(out_dir / "key.json", json.dumps(key, indent=2) + "\n")
    (out_dir / "answers").mkdir(exist_ok=True)  # where `study tally` looks for the downloaded files
    return atomic_write_text(out_dir / "page" / "index.html", _render_page(study_id, items, sizes))


@dataclass(frozen=True)
class Selection:
    """How often ``method`` was chosen for ``question``: ``count`` of ``total`` choices, with a 95% interval."""

    question: str
    method: str
    count: int
    total: int
    low: float
    high: float

    @property
    def ratio(self) -> float:
        return self.count / self.total


@dataclass(frozen=True)
class StudyTally:
    """Selection ratios per question and method; ``replaced`` are answer files superseded by a later one."""

    study: str
    items: int
    participants: tuple[str, ...]
    selections: tuple[Selection, ...]
    replaced: tuple[Path, ...] = ()

    def selection(self, question: str, method: str) -> Selection:
        for selection in self.selections:
            if (selection.question, selection.method) == (question, method):
                return selection
        raise KeyError(f"no selection for question {question!r} and method {method!r}")


def tally(study_dir: str | os.PathLike, answer_files: Sequence[str | os.PathLike]) -> StudyTally:
    """Count the choices in ``answer_files`` per question and method (the paper's selection ratio).

    Each choice counts once and a ratio is a method's share of all choices for the question
    (paper App. A). Its 95% interval is Wilson's score interval: closed-form, defined for
    any count (also 0 of n and n of n, where the normal approximation collapses), and the
    binomial interval behind a ratio of pooled choices. It takes choices as independent,
    though one participant's choices correlate, so it is somewhat narrower than the truth;
    a bootstrap over participants would cover that but is unstable with the few
    participants a small study has.

    A file naming another study, an unknown item or an unknown option is refused with a
    `StudyError` naming the file. A participant who sent several files is counted once:
    the file saved last (its ``saved`` time; files without one count as older, ties go to
    the later argument) replaces the others, as a participant re-downloads after changing
    an answer.
    """
    study_dir = Path(study_dir)
    key_path = study_dir / "key.json"
    try:
        key = json.loads(key_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StudyError(f"{key_path}: cannot read the study key ({error}); "
                         f"was {study_dir} made by make_study?") from error
    if not answer_files:
        raise StudyError("no answer files given")
    options = {item["item"]: item["options"] for item in key["items"]}
    files = [Path(path) for path in answer_files]
    parsed = [(*_read_answers(path, key["study"], options), index, path) for index, path in enumerate(files)]
    parsed.sort(key=lambda entry: (entry[1], entry[3]))  # by saved time, then argument order: last wins
    latest = {participant: (answers, path) for participant, _, answers, _, path in parsed}
    kept = {path for _, path in latest.values()}

    selections = []
    for question in QUESTIONS:
        counts = dict.fromkeys(key["methods"], 0)
        for answers, _ in latest.values():
            for answer in answers:
                counts[options[answer["item"]][answer[question.id]]] += 1
        total = sum(counts.values())
        if total == 0:
            raise StudyError(f"no answers in {', '.join(map(str, files))}")
        selections += [Selection(question.id, method, count, total, *wilson_interval(count, total))
                       for method, count in counts.items()]
    replaced = tuple(path for path in files if path not in kept)
    return StudyTally(key["study"], len(options), tuple(sorted(latest)), tuple(selections), replaced)


def format_tally(result: StudyTally) -> str:
    """A plain-text table: per question, each method's count, ratio and 95% interval."""
    total = result.selections[0].total if result.selections else 0
    lines = [
        f"study {result.study}: {len(result.participants)} participant(s), {result.items} item(s), "
        f"{total} choices per question",
        "95% CI: Wilson score interval, choices taken as independent",
    ]
    lines += [f"replaced by a later file of the same participant: {path}" for path in result.replaced]
    width = max(len("method"), *(len(selection.method) for selection in result.selections))
    for question in QUESTIONS:
        lines += ["", f"{question.id.upper()}: {question.label}",
                  f"{'method':<{width}}  {'count':>5}  {'ratio':>6}  95% CI"]
        lines += [f"{s.method:<{width}}  {s.count:>5}  {s.ratio:>6.3f}  [{s.low:.3f}, {s.high:.3f}]"
                  for s in result.selections if s.question == question.id]
    return "\n".join(lines)


def _read_answers(path: Path, study: str, options: dict[str, dict[str, str]]) -> tuple[str, str, list[dict]]:
    """An answer file's participant, saved time ("" when absent) and answers, checked against the study."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StudyError(f"{path}: not a readable JSON answer file ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
        raise StudyError(f"{path}: not an answer file (expected an object with 'participant', 'study', 'answers')")
    if data.get("study") != study:
        raise StudyError(f"{path}: answers for study {data.get('study')!r}, not for this study {study!r}")
    participant, saved = data.get("participant"), data.get("saved", "")
    if not isinstance(participant, str) or not participant.strip():
        raise StudyError(f"{path}: no participant id")
    if not isinstance(saved, str):
        raise StudyError(f"{path}: 'saved' is {saved!r}, not a time string")
    seen = set()
    for answer in data["answers"]:
        item = answer.get("item") if isinstance(answer, dict) else None
        if not isinstance(item, str) or item not in options:
            raise StudyError(f"{path}: unknown item {item!r}; this study has items 1 to {len(options)}")
        if item in seen:
            raise StudyError(f"{path}: item {item} is answered twice")
        seen.add(item)
        for question in QUESTIONS:
            choice = answer.get(question.id)
            if not isinstance(choice, str) or choice not in options[item]:
                raise StudyError(f"{path}: item {item}, {question.id}: {choice!r} is not one of its options "
                                 f"{', '.join(options[item])}")
    return participant.strip(), saved, data["answers"]


def _check_methods(methods: list[str]) -> None:
    if len(methods) < 2:
        raise StudyError(f"a study compares at least 2 methods, got {methods}")
    if len(methods) > len(OPTION_LABELS):
        raise StudyError(f"a study compares at most {len(OPTION_LABELS)} methods, got {len(methods)}")
    if len(set(methods)) != len(methods):
        raise StudyError(f"methods are listed more than once: {methods}")


def _complete_samples(run_dir: Path, methods: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Samples with a reference and every method's output, and, for the others, what they lack."""
    source_dir = run_dir / "inputs" / "source"
    samples = sorted(path.stem for path in source_dir.glob("*.png"))
    if not samples:
        raise StudyError(f"{source_dir}: no source images (*.png); is {run_dir} a benchmark run folder?")
    missing_method_dirs = [m for m in methods if not (run_dir / "outputs" / m).is_dir()]
    if missing_method_dirs:
        raise StudyError(f"{run_dir / 'outputs'}: no outputs for method(s) {', '.join(missing_method_dirs)}")
    needed = {"reference": run_dir / "inputs" / "reference", **{m: run_dir / "outputs" / m for m in methods}}
    left_out = {}
    for sample in samples:
        lacking = [name for name, folder in needed.items() if not (folder / f"{sample}.png").is_file()]
        if lacking:
            left_out[sample] = lacking
    complete = [sample for sample in samples if sample not in left_out]
    if not complete:
        shown = "; ".join(f"{sample}: {', '.join(lacking)}" for sample, lacking in list(left_out.items())[:10])
        raise StudyError(f"{run_dir}: no sample has a reference and an output from every method ({shown})")
    return complete, left_out


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a folder that holds something other than an earlier study."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "key.json").is_file():
        raise StudyError(f"{out_dir} is not empty and not a study folder (no key.json); choose a new folder")


def _write_item_images(run_dir: Path, item: dict, images_dir: Path, max_side: int) -> dict[str, tuple[int, int]]:
    """Write an item's reference, source and options (at the source's size); return each file's name and size."""
    sample, name = item["sample"], item["item"]
    reference = _shrink(read_image(run_dir / "inputs" / "reference" / f"{sample}.png"), max_side)
    source = _shrink(read_image(run_dir / "inputs" / "source" / f"{sample}.png"), max_side)
    images = {f"{name}-reference.jpg": reference, f"{name}-source.jpg": source}
    for label, method in item["options"].items():
        output = read_image(run_dir / "outputs" / method / f"{sample}.png")
        images[f"{name}-{label}.jpg"] = output if output.size == source.size else output.resize(
            source.size, Image.Resampling.LANCZOS)
    for file_name, image in images.items():
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)  # no EXIF, no text: nothing names a method
        atomic_write_bytes(images_dir / file_name, buffer.getvalue())
    return {file_name: image.size for file_name, image in images.items()}


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _render_page(study_id: str, items: list[dict], sizes: dict[str, tuple[int, int]]) -> str:
    assets = resources.files("seminft_bench.bench") / "study_page"
    template = string.Template((assets / "page.html").read_text(encoding="utf-8"))
    return template.substitute(
        study=html.escape(study_id),
        count=len(items),
        questions="".join(f"<li>{html.escape(q.prompt)}</li>" for q in QUESTIONS),
        items="\n".join(_render_item(item, len(items), sizes) for item in items),
        style=(assets / "study.css").read_text(encoding="utf-8"),
        script=(assets / "study.js").read_text(encoding="utf-8"),
    )


def _render_item(item: dict, count: int, sizes: dict[str, tuple[int, int]]) -> str:
    name = html.escape(item["item"])
    labels = list(item["options"])

    def figure(role: str, caption: str) -> str:
        file_name = f"{item['item']}-{role}.jpg"
        width, height = sizes[file_name]
        return (f'<figure><img src="images/{html.escape(file_name)}" width="{width}" height="{height}" '
                f'alt="{caption}" loading="lazy"><figcaption>{caption}</figcaption></figure>')

    def question(q: Question) -> str:
        choices = "".join(f'<label><input type="radio" name="{name}-{q.id}" value="{label}"> {label}</label>'
                          for label in labels)
        return (f'<fieldset class="question" data-question="{q.id}">'
                f"<legend>{q.id.upper()}. {html.escape(q.prompt)}</legend>{choices}</fieldset>")

    return "\n".join([
        f'<section class="item" id="item-{name}" data-item="{name}">',
        f"<h2>Item {name} of {count}</h2>",
        f'<div class="inputs">{figure("reference", "Reference")}{figure("source", "Source")}</div>',
        '<div class="options">' + "".join(figure(label, f"Result {label}") for label in labels) + "</div>",
        *(question(q) for q in QUESTIONS),
        "</section>",
    ])
