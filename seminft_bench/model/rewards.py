"""Rewards of the RL stage (paper §3.4): the VLM reward, a cheap colour-statistics one, offline anchors,
and the group normalisation of Eq. 5–6.

A reward scores (source, reference, prediction) triples on the paper's 0–5 scale; a triple it cannot
score is ``None`` (a failed VLM reply, an unreadable image), never 0: the loop drops it from its
group and counts it. Rewards compose with weights (`WeightedReward`).

Offline samples are (source, reference, image, human score) records the loop mixes into every
group as anchors (§3.4.2). Their file is JSON lines or Parquet with the columns

    id         unique text
    source     path of the source photo (relative to the file's folder, or absolute)
    reference  path of the reference photo
    image      path of the scored output
    score      the human score, a number in [0, 5]
    note       optional text (who scored it, or the rule that did)

Parquet files may embed the images instead (``{"bytes": ...}`` cells, as `datasets.Image()` writes).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from seminft_bench.errors import first_few
from seminft_bench.imaging import ImageReadError, ImageSource, from_array, read_image, to_array

SCORE_RANGE = (0.0, 5.0)
OFFLINE_COLUMNS = ("id", "source", "reference", "image", "score")


@dataclass(frozen=True)
class Triple:
    """What a reward scores: a method's ``prediction`` for ``source`` regraded like ``reference``."""

    name: str
    source: ImageSource
    reference: ImageSource
    prediction: ImageSource


class Reward:
    """Scores triples on 0–5; ``None`` for a triple it could not score (counted in ``failures``)."""

    name = "reward"

    def __init__(self) -> None:
        self.failures: list[str] = []

    def score(self, triples: Sequence[Triple]) -> list[float | None]:
        raise NotImplementedError

    def settings(self) -> dict:
        """What decides the scores, for the run's config and logs."""
        return {"reward": self.name}

    def close(self) -> None:
        """Release clients or models."""


# --------------------------------------------------------------------------- rewards


class ColorStatsReward(Reward):
    """5·exp(−d / scale), d = `colorstats.sliced_wasserstein_lab` of the prediction to the reference (the
    definition of the benchmark's weight-free ``color`` metric, sliced Wasserstein in CIELAB): 5 for the reference's colour distribution, falling with the distance.

    Cheap and deterministic, for debugging the loop and for CPU tests. It sees colours only: like
    any single statistic it can be gamed (copying the reference scores 5), which is what the offline
    anchors and the VLM reward are for.
    """

    name = "color-stats"

    def __init__(self, scale: float = 20.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale

    def score(self, triples: Sequence[Triple]) -> list[float | None]:
        from seminft_bench.colorstats import sliced_wasserstein_lab

        scores: list[float | None] = []
        for triple in triples:
            try:
                distance = sliced_wasserstein_lab(to_array(read_image(triple.prediction)), to_array(read_image(triple.reference)))
            except (ImageReadError, ValueError) as error:
                self.failures.append(f"{triple.name}: {error}")
                scores.append(None)
                continue
            scores.append(SCORE_RANGE[1] * math.exp(-distance / self.scale))
        return scores

    def settings(self) -> dict:
        return {"reward": self.name, "scale": self.scale}


class VLMReward(Reward):
    """The paper's reward (§3.4.1): a VLM (Qwen3-VL-8B-Instruct) sees (reference, prediction) with the Fig. 8
    reward prompt, answers one token, and the score is Eq. 4 over its 0–5 token probabilities.

    A `seminft_bench.vlm.Judge` in reward mode does the asking: locally through transformers (one
    forward pass, last-position logits) or through an OpenAI-compatible server (vLLM, SGLang) with
    ``top_logprobs``; replies with under ``min_mass`` of their probability on the score tokens are
    failures, as in the benchmark.
    """

    name = "vlm"

    def __init__(self, judge):
        super().__init__()
        if judge.mode != "reward":
            raise ValueError(f"judge {judge.name} is in {judge.mode} mode; VLMReward needs Judge(..., reward=True)")
        self.judge = judge

    @classmethod
    def from_name(cls, name: str = "qwen3-vl-8b", **options) -> VLMReward:
        """``name`` from the judge registry or a judge config (``config=``, ``base_url=``, ``device=``, ``cache=``…).

        Raises `seminft_bench.vlm.JudgeUnavailable` naming what is missing (weights, a GPU or a server).
        """
        from seminft_bench.vlm import Judge

        return cls(Judge.from_name(name, reward=True, **options))

    def score(self, triples: Sequence[Triple]) -> list[float | None]:
        from seminft_bench.vlm import Pair

        judgements = self.judge.score_pairs([Pair(t.name, t.reference, t.prediction) for t in triples])
        for judgement in judgements:
            if judgement.score is None:
                self.failures.append(f"{judgement.name}: {judgement.error}")
        return [judgement.score for judgement in judgements]

    def settings(self) -> dict:
        return {"reward": self.name, **self.judge.settings()}

    def close(self) -> None:
        self.judge.close()


class WeightedReward(Reward):
    """The weighted mean of several rewards (weights normalised, so the scale stays 0–5); a triple any
    part fails on fails as a whole."""

    name = "weighted"

    def __init__(self, parts: Sequence[tuple[Reward, float]]):
        super().__init__()
        if not parts or any(weight < 0 for _, weight in parts) or sum(weight for _, weight in parts) <= 0:
            raise ValueError("a weighted reward needs at least one part and non-negative weights with a positive sum")
        total = sum(weight for _, weight in parts)
        self.parts = [(reward, weight / total) for reward, weight in parts]

    def score(self, triples: Sequence[Triple]) -> list[float | None]:
        columns = [reward.score(triples) for reward, _ in self.parts]
        scores: list[float | None] = []
        for i, triple in enumerate(triples):
            values = [column[i] for column in columns]
            if any(value is None for value in values):
                self.failures.append(f"{triple.name}: a part of the weighted reward failed")
                scores.append(None)
            else:
                scores.append(sum(value * weight for value, (_, weight) in zip(values, self.parts)))
        return scores

    def settings(self) -> dict:
        return {"reward": self.name, "parts": [{**r.settings(), "weight": w} for r, w in self.parts]}

    def close(self) -> None:
        for reward, _ in self.parts:
            reward.close()


# --------------------------------------------------------------------------- Eq. 5–6


def group_normalize(
    online_raw: Sequence[float], offline_raw: Sequence[float], eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5–6: r = ½·clip((s − μ)/σ, −1, 1) + ½, with μ and σ (population) over online and offline scores together.

    σ below ``eps`` counts as ``eps``: a group whose scores are all equal gets r = 0.5 everywhere
    (no preference either way), never NaN.
    """
    online = np.asarray(online_raw, dtype=np.float64).reshape(-1)
    offline = np.asarray(offline_raw, dtype=np.float64).reshape(-1)
    scores = np.concatenate([online, offline])
    if scores.size == 0:
        raise ValueError("group_normalize needs at least one score")
    if not np.isfinite(scores).all():
        raise ValueError("group_normalize got a non-finite score; drop failed rewards before normalising")
    mu = scores.mean()
    sigma = max(float(np.sqrt(np.mean((scores - mu) ** 2))), eps)
    normalized = 0.5 * np.clip((scores - mu) / sigma, -1.0, 1.0) + 0.5
    return normalized[: online.size], normalized[online.size :]


# --------------------------------------------------------------------------- offline samples


class OfflineSamplesError(ValueError):
    """An offline-samples file that cannot be used; the message names the file and the records."""


@dataclass(frozen=True)
class OfflineSample:
    id: str
    source: ImageSource
    reference: ImageSource
    image: ImageSource
    score: float
    note: str | None = None


def load_offline_samples(path: str | os.PathLike) -> list[OfflineSample]:
    """Every record of the JSONL or Parquet file ``path``, checked: columns, unique ids, scores in [0, 5],
    images that exist and decode. All problems are reported at once."""
    path = Path(path)
    if not path.is_file():
        raise OfflineSamplesError(f"{path}: no such offline-samples file")
    rows = _read_rows(path)
    samples, problems, seen = [], [], set()
    for number, row in enumerate(rows, 1):
        label = f"record {number}" + (f" (id {row.get('id')!r})" if isinstance(row, dict) and row.get("id") else "")
        if not isinstance(row, dict):
            problems.append(f"{label}: not an object")
            continue
        missing = [column for column in OFFLINE_COLUMNS if row.get(column) is None]
        if missing:
            problems.append(f"{label}: lacks {', '.join(missing)}")
            continue
        sample_id = str(row["id"])
        if sample_id in seen:
            problems.append(f"{label}: duplicate id")
            continue
        seen.add(sample_id)
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
            problems.append(f"{label}: score must be a number in [0, 5], got {score!r}")
            continue
        images = {}
        for role in ("source", "reference", "image"):
            try:
                images[role] = _offline_image(row[role], path.parent, f"{sample_id}/{role}")
            except (ImageReadError, FileNotFoundError) as error:
                problems.append(f"{label}: {role}: {error}")
        if len(images) == 3:
            samples.append(OfflineSample(sample_id, score=float(score), note=row.get("note"), **images))
    if problems:
        raise OfflineSamplesError(f"{path}: {len(problems)} unusable record(s): {first_few(problems)}")
    if not samples:
        raise OfflineSamplesError(f"{path}: no records")
    return samples


def _read_rows(path: Path) -> list:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise OfflineSamplesError(f"{path}: not a readable Parquet file ({error})") from None
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise OfflineSamplesError(f"{path}:{number}: not a JSON object") from None
    return rows


def _offline_image(value, folder: Path, name: str) -> Image.Image:
    """An image cell: a path (relative to the file's folder) or embedded bytes; decoded now so a bad one fails early."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return read_image(value["bytes"], name=name)
    if isinstance(value, dict):
        value = value.get("path")
    if not isinstance(value, str):
        raise FileNotFoundError(f"expected a path or embedded image bytes, got {type(value).__name__}")
    file = Path(value) if Path(value).is_absolute() else folder / value
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist")
    return read_image(file, name=name)


def draw_offline(samples: Sequence[OfflineSample], count: int, rng: np.random.Generator) -> list[OfflineSample]:
    """``count`` distinct samples for one group (all of them, shuffled, when there are fewer)."""
    order = rng.permutation(len(samples))[: min(count, len(samples))]
    return [samples[i] for i in order]


EXAMPLE_RULE = {
    "reinhard": (3.5, "the reference's colour statistics on the source (Reinhard): a fair transfer"),
    "source": (1.5, "the source unchanged: nothing transferred"),
    "reference": (0.5, "the reference itself: its content copied, the source lost"),
}
"""Scores of the shipped example anchors, by rule: stand-ins for human scores, never to be reported as such."""


def write_example_offline_samples(pairs: str | os.PathLike, out: str | os.PathLike, count: int = 4) -> Path:
    """An EXAMPLE offline-samples file from the first ``count`` pairs of an RL-pairs (or cold-start) folder:
    per pair, three outputs scored by `EXAMPLE_RULE` (each record's ``note`` says so). Real anchors are
    outputs scored by people; this only shows the format and exercises the loop."""
    from seminft_bench.colorstats import reinhard_transfer
    from seminft_bench.fileio import atomic_write_text
    from seminft_bench.imaging import write_png
    from seminft_bench.model.training import iter_rows, resolve_dataset, split_shards

    root, out = resolve_dataset(pairs), Path(out)
    records = []
    for row in iter_rows(split_shards(root, "train"), ["id", "source", "reference"]):
        if len(records) == count * len(EXAMPLE_RULE):
            break
        sample_id = str(row["id"])
        source, reference = read_image(row["source"]["bytes"]), read_image(row["reference"]["bytes"])
        graded = from_array(np.clip(reinhard_transfer(to_array(source, np.float32), to_array(reference, np.float32)), 0, 1))
        outputs = {"reinhard": graded, "source": source, "reference": reference}
        paths = {}
        for role, image in (("source", source), ("reference", reference)):
            paths[role] = write_png(image, out / "images" / f"{sample_id}-{role}.png").relative_to(out)
        for kind, (score, why) in EXAMPLE_RULE.items():
            image = write_png(outputs[kind], out / "images" / f"{sample_id}-{kind}-output.png").relative_to(out)
            records.append({
                "id": f"{sample_id}-{kind}", "source": str(paths["source"]), "reference": str(paths["reference"]),
                "image": str(image), "score": score, "note": f"EXAMPLE, scored by rule, not by people: {why}",
            })
    if not records:
        raise OfflineSamplesError(f"{root}: no pairs to build example offline samples from")
    return atomic_write_text(out / "offline.jsonl", "".join(json.dumps(r) + "\n" for r in records))
