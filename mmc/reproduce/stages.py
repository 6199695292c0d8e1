"""What each stage's re-execution is compared by: the one table of reproduction declarations.

A stage is re-executable when running its recorded command again has no effect outside a scratch
directory. Its produced files are compared with the recorded sha256 first; a file whose bytes
differ is then compared by value, by its kind (:data:`KINDS`, by file suffix):

- ``checkpoint`` (``.pth``): tensor by tensor, every other entry by value;
- ``json`` / ``jsonl``: by value, key by key (strings holding numbers: number by number);
- ``csv``: cell by cell; ``parquet``: column by column, cell by cell;
- ``text`` (``.md``, ``.tex``, ``.svg``): the text around the numbers exactly, the numbers by value;
- ``image`` (``.png``): pixel by pixel;
- anything else: bitwise only.

``ignore`` names the fields a stage writes about *how* it ran rather than what it computed
(wall-clock throughput, feature-cache hits): they are left out of the value comparison, and the
report says so. ``tolerance`` is what a value may differ by when either run used a GPU (whose
kernels may change the last bits between runs, devices and library versions); on CPU every value
must be equal (docs/provenance.md, deterministic mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Tolerance:
    """A value ``b`` equals a recorded ``a`` when ``|a - b| <= atol + rtol * |a|``; an image when at
    most ``pixels`` of its pixels (a fraction) differ."""

    rtol: float = 0.0
    atol: float = 0.0
    pixels: float = 0.0

    def ratio(self, recorded: float, reproduced: float) -> float:
        """How far outside the tolerance a pair is: <= 1 within it, inf for any difference at zero."""
        if recorded == reproduced or (math.isnan(recorded) and math.isnan(reproduced)):
            return 0.0
        if math.isnan(recorded) or math.isnan(reproduced):
            return math.inf
        allowed = self.atol + self.rtol * abs(recorded)
        return abs(recorded - reproduced) / allowed if allowed > 0 else math.inf

    def describe(self) -> str:
        parts = [f"rtol {self.rtol:g}", f"atol {self.atol:g}"]
        if self.pixels:
            parts.append(f"pixels {self.pixels:g}")
        return ", ".join(parts)


EXACT = Tolerance()

# file suffix -> how its values are compared (anything else: bitwise only)
KINDS = {
    ".pth": "checkpoint", ".pt": "checkpoint",
    ".json": "json", ".jsonl": "jsonl",
    ".csv": "csv", ".parquet": "parquet",
    ".md": "text", ".tex": "text", ".svg": "text", ".txt": "text",
    ".png": "image",
}  # fmt: skip


def kind_of(path: str) -> str:
    return KINDS.get(PurePosixPath(path).suffix.lower(), "bitwise")


@dataclass(frozen=True)
class StagePolicy:
    """How one stage is reproduced. ``not_reexecutable`` says why a stage is never run again."""

    reads_data: bool = False  # reads datasets under data_dir: the data's DVC md5 is verified first
    tolerance: Tolerance = EXACT  # when a GPU took part
    ignore: dict[str, tuple[str, ...]] = field(default_factory=dict)  # file name -> dotted keys
    not_reexecutable: str | None = None

    def ignored_fields(self, path: str) -> tuple[str, ...]:
        return self.ignore.get(PurePosixPath(path).name, ())


# Features a stage took from the feature cache ({state_dir}/features) instead of a forward pass:
# an audit starts with an empty cache and recomputes them, so these counts differ by design.
_CACHE_COUNTS = ("features.computed", "features.cached")
# GPU kernels (cuBLAS split-K, atomics in attention and reductions) may change the last bits of a
# float32 result; 1e-4 relative covers that for one forward pass and a few hundred optimiser steps.
_GPU_FLOAT = Tolerance(rtol=1e-4, atol=1e-6)
# A flipped patch at a threshold changes one object's IoU by about 1/area; averaged metrics stay
# within 1e-3. Figures of such values may move a few pixels.
_GPU_METRICS = Tolerance(rtol=1e-3, atol=1e-3, pixels=1e-3)

# The pipeline's stages, in the order the sampler visits them (upstream first). Stage = rule =
# command (docs/architecture.md); stages not listed are refused ("no reproduction declaration").
STAGES: dict[str, StagePolicy] = {
    "pretrain": StagePolicy(reads_data=True, tolerance=_GPU_FLOAT,
                            ignore={"train_metrics.jsonl": ("images_per_s",)}),  # wall-clock throughput
    "select": StagePolicy(reads_data=True, tolerance=_GPU_METRICS),
    "segment": StagePolicy(reads_data=True, tolerance=_GPU_METRICS, ignore={"summary.json": _CACHE_COUNTS}),
    "similarity": StagePolicy(reads_data=True, tolerance=_GPU_METRICS, ignore={"similarity.json": _CACHE_COUNTS}),
    # pure functions of verified inputs (JSON, parquet; a seeded bootstrap), without torch: always exact
    "tables": StagePolicy(),
    "figures": StagePolicy(reads_data=True, tolerance=_GPU_METRICS),  # qualitative overlays run the models
    # the prompt explorer embeds the evaluation's features (a self-contained HTML page, compared
    # bitwise: on another GPU its last bits may differ, which the audit reports as a difference)
    "explorer": StagePolicy(reads_data=True, tolerance=_GPU_METRICS),
    "report": StagePolicy(),
    "publish": StagePolicy(not_reexecutable=(
        "runs `dvc add` and `dvc push` (writes the DVC cache, the remote and E.pth.dvc); its output is "
        "a byte copy of the selected checkpoint, which `mmc provenance` verifies by sha256")),
    "version_data": StagePolicy(not_reexecutable=(
        "runs `dvc add` and `dvc push` of the data folder; an audit verifies the data's DVC md5 "
        "instead (before every re-executed job that reads data)")),
    "download": StagePolicy(not_reexecutable=(
        "downloads from the internet; the archives are verified against their published hashes")),
    "fetch_checkpoint": StagePolicy(not_reexecutable=(
        "downloads from the internet; the checkpoint is verified against its configured sha256")),
}


def policy(stage: str) -> StagePolicy | None:
    return STAGES.get(stage)


def reexecutable(stage: str) -> bool:
    found = STAGES.get(stage)
    return found is not None and found.not_reexecutable is None
