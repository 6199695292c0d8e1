"""The directory layout each dataset format must have after extraction (the readers rely on it).

A layout is a list of entries relative to the dataset root: directories that must exist and hold
at least one file, and files that must exist. Entries depend on the split (``val`` for every
evaluation dataset of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmc.errors import MMCError

# How deep below the extraction directory the dataset root may sit (e.g. VOCdevkit/VOC2012).
MAX_ROOT_DEPTH = 3


@dataclass(frozen=True)
class Entry:
    path: str
    kind: str  # "dir" (non-empty directory) or "file"


def ade20k_split_dir(split: str) -> str:
    """ADE20K's folder for a split: ``val`` and ``validation`` both name ``validation``."""
    return {"val": "validation", "train": "training"}.get(split, split)


def coco_split_name(split: str) -> str:
    """COCO's name for a split: ``val`` and ``val2017`` both name ``val2017``."""
    return split if split[-4:].isdigit() else f"{split}2017"


def expected_layout(fmt: str, split: str) -> tuple[Entry, ...]:
    if fmt in ("voc", "synthetic"):
        return (
            Entry("JPEGImages", "dir"),
            Entry("SegmentationClass", "dir"),
            Entry("SegmentationObject", "dir"),
            Entry(f"ImageSets/Segmentation/{split}.txt", "file"),
        )
    if fmt == "coco":
        name = coco_split_name(split)
        return (Entry(name, "dir"), Entry(f"annotations/instances_{name}.json", "file"))
    if fmt == "ade20k":
        sub = ade20k_split_dir(split)
        return (Entry(f"images/{sub}", "dir"), Entry(f"annotations/{sub}", "dir"))
    if fmt == "davis":
        return (Entry("JPEGImages/480p", "dir"), Entry("Annotations/480p", "dir"), Entry(f"ImageSets/2017/{split}.txt", "file"))
    raise MMCError(f"no known layout for dataset format {fmt!r} (known: voc, synthetic, coco, ade20k, davis)")


def missing_entries(root: Path, fmt: str, split: str) -> list[str]:
    """What ``root`` lacks to be a complete ``fmt`` dataset (empty list: the layout is complete)."""
    missing = []
    for entry in expected_layout(fmt, split):
        path = root / entry.path
        if entry.kind == "file" and not path.is_file():
            missing.append(entry.path)
        elif entry.kind == "dir" and not (path.is_dir() and any(path.iterdir())):
            missing.append(entry.path + "/ (non-empty directory)")
    return missing


def find_dataset_root(extracted: Path, fmt: str, split: str, what: str) -> Path:
    """The directory at or below ``extracted`` (depth <= MAX_ROOT_DEPTH) with the complete layout.

    Archives wrap their data differently (``VOCdevkit/VOC2012``, ``ADEChallengeData2016``,
    ``DAVIS``, nothing for COCO); the shallowest complete directory is the dataset root.
    """
    best: tuple[int, Path] | None = None
    level = [extracted]
    for _depth in range(MAX_ROOT_DEPTH + 1):
        for candidate in level:
            missing = missing_entries(candidate, fmt, split)
            if not missing:
                return candidate
            if best is None or len(missing) < best[0]:
                best = (len(missing), candidate)
        level = sorted(d for parent in level for d in parent.iterdir() if d.is_dir() and not d.is_symlink())
    assert best is not None
    closest = best[1].relative_to(extracted).as_posix()
    missing = missing_entries(best[1], fmt, split)
    raise MMCError(
        f"{what}: unexpected layout: no directory has the {fmt} layout for split {split!r} "
        f"(closest: '{closest}', missing {', '.join(missing)})"
    )
