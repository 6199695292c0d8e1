"""The evaluation's result files as typed objects: ``summary.json`` and ``similarity.json``.

``mmc segment`` writes a :class:`SegmentationSummary`, ``mmc similarity`` a :class:`SimilarityResult`
(``to_json``); ``mmc tables``, ``mmc select`` and ``mmc figures`` read them back with
:func:`read_segmentation_summary` and :func:`read_similarity_result`, the only readers. The fields are
the JSON keys, in the order they are written; docs/evaluation.md describes each.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mmc.errors import MMCError
from mmc.evaluation.protocol import tau_key


@dataclass(frozen=True)
class SegmentationSummary:
    """One model on one dataset, as scored by ``mmc segment`` (or by checkpoint selection)."""

    model: str
    dataset: str
    n_objects: int
    n_skipped: int
    thresholds: list[float]
    miou_by_tau: dict[str, float | None]  # keyed by protocol.tau_key(tau); None: no object evaluated
    best_tau: float | None  # the lowest tau of the highest mIoU
    best_miou: float | None
    demo_tau: float
    miou_at_demo_tau: float | None
    oracle_miou: float | None
    checkpoint_sha256: str | None  # None for a randomly initialised backbone
    settings: dict | None = None  # the evaluation options the numbers depend on
    features: dict | None = None  # {computed, cached}: images run through the backbone, from the cache
    seed: int | None = None  # the training seed of a seeded model's evaluation (mmc.config.model_seeds)

    def miou_at(self, tau: float) -> float | None:
        return self.miou_by_tau[tau_key(tau)]

    def curve(self) -> tuple[list[float], list[float]]:
        """(taus, mIoUs) sorted by tau."""
        points = sorted((float(t), float(v)) for t, v in self.miou_by_tau.items())
        return [t for t, _ in points], [v for _, v in points]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


@dataclass(frozen=True)
class SimilarityResult:
    """One model on one dataset, as analysed by ``mmc similarity``."""

    model: str
    dataset: str
    n_intra: int
    n_inter: int
    mean_intra: float
    mean_inter: float
    overlap: float  # metrics.histogram_overlap of the two distributions
    best_balanced_accuracy: float
    best_threshold: float
    bins: list[float]  # histogram edges on [-1, 1], one more than bins
    hist_intra: list[float]  # normalised (sums to 1)
    hist_inter: list[float]
    checkpoint_sha256: str | None
    settings: dict | None = None  # the evaluation and similarity options the numbers depend on
    features: dict | None = None
    seed: int | None = None  # as in SegmentationSummary

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


Record = TypeVar("Record", SegmentationSummary, SimilarityResult)


def _read(path: str | Path, kind: type[Record], what: str) -> Record:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MMCError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(raw, dict):
        raise MMCError(f"{path}: expected {what} (a JSON object), got {type(raw).__name__}")
    fields = dataclasses.fields(kind)
    missing = [f.name for f in fields if f.name not in raw and f.default is dataclasses.MISSING]
    if missing:
        raise MMCError(f"{path}: missing key(s) {', '.join(missing)} (expected {what})")
    return kind(**{f.name: raw[f.name] for f in fields if f.name in raw})


def read_segmentation_summary(path: str | Path) -> SegmentationSummary:
    return _read(path, SegmentationSummary, "the summary.json of mmc segment")


def read_similarity_result(path: str | Path) -> SimilarityResult:
    result = _read(path, SimilarityResult, "the similarity.json of mmc similarity")
    sizes = {len(result.bins) - 1, len(result.hist_intra), len(result.hist_inter)}
    if len(sizes) != 1:
        raise MMCError(
            f"{path}: bins has {len(result.bins)} edges for histograms of {len(result.hist_intra)} and "
            f"{len(result.hist_inter)} bins (expected one edge more than bins)"
        )
    return result


def read_segmentation_summaries(paths: Iterable[str | Path]) -> list[SegmentationSummary]:
    return _unique(paths, read_segmentation_summary)


def read_similarity_results(paths: Iterable[str | Path]) -> list[SimilarityResult]:
    return _unique(paths, read_similarity_result)


def _unique(paths: Iterable[str | Path], read: Callable[[str | Path], Record]) -> list[Record]:
    """Every file read; a (model, dataset, seed) read twice is an error naming both files."""
    records: list[Record] = []
    seen: dict[tuple[str, str, int | None], str] = {}
    for path in paths:
        record = read(path)
        key = (record.model, record.dataset, record.seed)
        if key in seen:
            seed = "" if record.seed is None else f" with seed {record.seed}"
            raise MMCError(f"{path}: model {key[0]!r} on dataset {key[1]!r}{seed} also in {seen[key]}")
        seen[key] = str(path)
        records.append(record)
    return records
