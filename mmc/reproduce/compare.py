"""Comparing a re-executed job's file with the recorded one: bitwise, then by value.

Every comparator walks both files and feeds each pair of values to a :class:`Tally`, which counts
the values that differ, keeps the largest numeric difference and the first difference that no
tolerance can cover (a changed key, a string, a shape), and tells whether every pair lies within
the :class:`~mmc.reproduce.stages.Tolerance`. Heavy readers (torch, pandas, PIL) are imported by
the comparator that needs them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmc.files import sha256_file
from mmc.reproduce.stages import Tolerance

# a decimal number as printed by Python, Markdown/LaTeX tables or SVG path data
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\b(?:nan|inf)\b")


@dataclass
class Difference:
    """Where two files differ, and by how much (numbers only)."""

    where: str
    recorded: str
    reproduced: str
    abs_diff: float | None = None
    rel_diff: float | None = None

    def describe(self) -> str:
        text = f"{self.where}: recorded {self.recorded}, reproduced {self.reproduced}"
        if self.abs_diff is not None:
            text += f" (difference {self.abs_diff:.3g}" + (
                f", relative {self.rel_diff:.3g})" if self.rel_diff is not None else ")")
        return text


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Tally:
    """The value-by-value comparison of two documents under one tolerance."""

    tolerance: Tolerance
    ignore: frozenset[str] = frozenset()  # dotted key paths (list positions left out)
    compared: int = 0
    differing: int = 0
    worst_ratio: float = 0.0  # max over pairs of |a - b| / (atol + rtol |a|)
    largest: Difference | None = None  # the largest numeric difference
    mismatch: Difference | None = None  # the first difference no tolerance covers
    ignored_seen: set[str] = field(default_factory=set)

    @property
    def identical(self) -> bool:
        return self.differing == 0 and self.mismatch is None

    @property
    def within(self) -> bool:
        return self.mismatch is None and self.worst_ratio <= 1.0

    def first(self) -> Difference | None:
        return self.mismatch or self.largest

    # ------------------------------------------------------------------ one pair
    def structural(self, where: str, recorded: Any, reproduced: Any) -> None:
        self.compared += 1
        self.differing += 1
        if self.mismatch is None:
            self.mismatch = Difference(where, _short(recorded), _short(reproduced))

    def number(self, where: str, recorded: float, reproduced: float) -> None:
        self.compared += 1
        ratio = self.tolerance.ratio(float(recorded), float(reproduced))
        if ratio == 0.0:
            return
        self.differing += 1
        self.worst_ratio = max(self.worst_ratio, ratio)
        diff = abs(float(recorded) - float(reproduced))
        if self.largest is None or not (diff <= (self.largest.abs_diff or 0.0)):
            rel = diff / abs(float(recorded)) if recorded not in (0, 0.0) and math.isfinite(diff) else None
            self.largest = Difference(where, _short(recorded), _short(reproduced), diff, rel)

    def text(self, where: str, recorded: str, reproduced: str) -> None:
        """Strings: equal, or equal around their numbers with the numbers within tolerance."""
        if recorded == reproduced:
            self.compared += 1
            return
        a_parts, b_parts = NUMBER.split(recorded), NUMBER.split(reproduced)
        if a_parts != b_parts:
            self.structural(where, recorded, reproduced)
            return
        for i, (a, b) in enumerate(zip(NUMBER.findall(recorded), NUMBER.findall(reproduced), strict=True)):
            at = f"{where} (number {i + 1})"
            if _integral(a) and _integral(b):  # counts, epochs, digits of a hash: exact
                if a != b:
                    self.structural(at, recorded, reproduced)
                    return
                self.compared += 1
            else:
                self.number(at, float(a), float(b))

    def value(self, where: str, recorded: Any, reproduced: Any, keys: tuple[str, ...] = ()) -> None:
        """Any pair of decoded values: mappings key by key, sequences item by item, tensors element-wise."""
        if keys and ".".join(keys) in self.ignore:
            self.ignored_seen.add(".".join(keys))
            return
        if _is_tensor(recorded) or _is_tensor(reproduced):
            self.tensor(where, recorded, reproduced)
        elif isinstance(recorded, dict) and isinstance(reproduced, dict):
            if list(recorded) != list(reproduced) and set(recorded) != set(reproduced):
                missing = sorted(map(str, set(recorded) - set(reproduced)))
                extra = sorted(map(str, set(reproduced) - set(recorded)))
                self.structural(f"{where or '(top level)'} keys", f"missing in reproduction: {missing}",
                                f"only in reproduction: {extra}")
                return
            for key in recorded:
                self.value(f"{where}.{key}" if where else str(key), recorded[key], reproduced[key], (*keys, str(key)))
        elif isinstance(recorded, list | tuple) and isinstance(reproduced, list | tuple):
            if len(recorded) != len(reproduced):
                self.structural(f"{where} length", len(recorded), len(reproduced))
                return
            for i, (a, b) in enumerate(zip(recorded, reproduced, strict=True)):
                self.value(f"{where}[{i}]", a, b, keys)
        elif _is_number(recorded) and _is_number(reproduced):
            self.number(where, recorded, reproduced)
        elif isinstance(recorded, str) and isinstance(reproduced, str):
            self.text(where, recorded, reproduced)
        elif recorded == reproduced and type(recorded) is type(reproduced):
            self.compared += 1
        else:
            self.structural(where, recorded, reproduced)

    def tensor(self, where: str, recorded: Any, reproduced: Any) -> None:
        import torch

        if not (_is_tensor(recorded) and _is_tensor(reproduced)):
            self.structural(where, type(recorded).__name__, type(reproduced).__name__)
            return
        if recorded.dtype != reproduced.dtype or recorded.shape != reproduced.shape:
            self.structural(where, f"{recorded.dtype} {tuple(recorded.shape)}", f"{reproduced.dtype} {tuple(reproduced.shape)}")
            return
        count = recorded.numel()
        self.compared += count
        if torch.equal(recorded, reproduced) or count == 0:
            return
        if recorded.dtype == torch.bool:
            self.structural(where, "bool tensor", "a different bool tensor")
            return
        a, b = recorded.detach().cpu().double().flatten(), reproduced.detach().cpu().double().flatten()
        both_nan = torch.isnan(a) & torch.isnan(b)
        diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
        diff = torch.nan_to_num(diff, nan=math.inf)
        differing = diff > 0
        self.differing += int(differing.sum())
        allowed = self.tolerance.atol + self.tolerance.rtol * a.abs()
        ratio = torch.where(allowed > 0, diff / allowed, torch.where(differing, math.inf, 0.0))
        self.worst_ratio = max(self.worst_ratio, float(ratio.max()))
        index = int(diff.argmax())
        largest = float(diff[index])
        if self.largest is None or not (largest <= (self.largest.abs_diff or 0.0)):
            position = list(torch.unravel_index(torch.tensor(index), recorded.shape)) if recorded.dim() else []
            at = "[" + ", ".join(str(int(p)) for p in position) + "]" if position else ""
            rel = largest / abs(float(a[index])) if float(a[index]) != 0 and math.isfinite(largest) else None
            self.largest = Difference(f"{where}{at}", repr(float(a[index])), repr(float(b[index])), largest, rel)


def _integral(token: str) -> bool:
    return not any(c in token for c in ".eEnNiI")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "dtype") and hasattr(value, "shape")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (from parquet) as Python values."""
    return value.tolist() if hasattr(value, "tolist") else value


# ----------------------------------------------------------------------------- per file kind
def compare_json(recorded: Path, reproduced: Path, tally: Tally) -> None:
    tally.value("", json.loads(recorded.read_text()), json.loads(reproduced.read_text()))


def compare_jsonl(recorded: Path, reproduced: Path, tally: Tally) -> None:
    a_lines = [line for line in recorded.read_text().splitlines() if line.strip()]
    b_lines = [line for line in reproduced.read_text().splitlines() if line.strip()]
    if len(a_lines) != len(b_lines):
        tally.structural("number of lines", len(a_lines), len(b_lines))
        return
    for number, (a, b) in enumerate(zip(a_lines, b_lines, strict=True), 1):
        tally.value(f"line {number}", json.loads(a), json.loads(b))


def _cell(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def compare_csv(recorded: Path, reproduced: Path, tally: Tally) -> None:
    a_rows = list(csv.reader(io.StringIO(recorded.read_text())))
    b_rows = list(csv.reader(io.StringIO(reproduced.read_text())))
    if not a_rows or not b_rows or a_rows[0] != b_rows[0]:
        tally.structural("header", a_rows[0] if a_rows else [], b_rows[0] if b_rows else [])
        return
    header = a_rows[0]
    if len(a_rows) != len(b_rows):
        tally.structural("number of rows", len(a_rows) - 1, len(b_rows) - 1)
        return
    for r, (a_row, b_row) in enumerate(zip(a_rows[1:], b_rows[1:], strict=True), 1):
        if len(a_row) != len(b_row):
            tally.structural(f"row {r} length", len(a_row), len(b_row))
            continue
        for c, (a, b) in enumerate(zip(a_row, b_row, strict=True)):
            column = header[c] if c < len(header) else str(c)
            tally.value(f"row {r}, column {column}", _cell(a), _cell(b))


def compare_parquet(recorded: Path, reproduced: Path, tally: Tally) -> None:
    import pandas as pd

    a, b = pd.read_parquet(recorded), pd.read_parquet(reproduced)
    if list(a.columns) != list(b.columns):
        tally.structural("columns", list(a.columns), list(b.columns))
        return
    if len(a) != len(b):
        tally.structural("number of rows", len(a), len(b))
        return
    for column in a.columns:
        if str(a[column].dtype) != str(b[column].dtype):
            tally.structural(f"column {column} dtype", str(a[column].dtype), str(b[column].dtype))
            continue
        for r, (x, y) in enumerate(zip(a[column].tolist(), b[column].tolist(), strict=True)):
            tally.value(f"row {r}, column {column}", _plain(x), _plain(y))


def compare_text(recorded: Path, reproduced: Path, tally: Tally) -> None:
    a_lines, b_lines = recorded.read_text().splitlines(), reproduced.read_text().splitlines()
    if len(a_lines) != len(b_lines):
        tally.structural("number of lines", len(a_lines), len(b_lines))
        return
    for number, (a, b) in enumerate(zip(a_lines, b_lines, strict=True), 1):
        tally.text(f"line {number}", a, b)


def compare_checkpoint(recorded: Path, reproduced: Path, tally: Tally) -> None:
    import torch

    a = torch.load(recorded, map_location="cpu", weights_only=True)
    b = torch.load(reproduced, map_location="cpu", weights_only=True)
    tally.value("", a, b)


def compare_image(recorded: Path, reproduced: Path, tally: Tally) -> None:
    """Pixel by pixel (RGBA): the fraction of pixels that differ is what the tolerance bounds."""
    import numpy as np
    from PIL import Image

    with Image.open(recorded) as image:
        a = np.asarray(image.convert("RGBA"))
    with Image.open(reproduced) as image:
        b = np.asarray(image.convert("RGBA"))
    if a.shape != b.shape:
        tally.structural("image size", a.shape, b.shape)
        return
    differs = (a != b).any(axis=-1)
    pixels = differs.size
    tally.compared += pixels
    count = int(differs.sum())
    if count == 0:
        return
    tally.differing += count
    fraction = count / pixels
    allowed = tally.tolerance.pixels
    tally.worst_ratio = max(tally.worst_ratio, fraction / allowed if allowed > 0 else math.inf)
    y, x = (int(v) for v in np.argwhere(differs)[0])
    tally.largest = Difference(f"pixel (x {x}, y {y}); {count} of {pixels} pixels differ",
                               str(a[y, x].tolist()), str(b[y, x].tolist()), fraction, None)


def first_byte_difference(recorded: Path, reproduced: Path) -> Difference:
    a, b = recorded.read_bytes(), reproduced.read_bytes()
    offset = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return Difference(f"byte {offset} (sizes {len(a)} and {len(b)})", a[offset:offset + 8].hex() or "end of file",
                      b[offset:offset + 8].hex() or "end of file")


COMPARATORS: dict[str, Callable[[Path, Path, Tally], None]] = {
    "json": compare_json, "jsonl": compare_jsonl, "csv": compare_csv, "parquet": compare_parquet,
    "text": compare_text, "checkpoint": compare_checkpoint, "image": compare_image,
}  # fmt: skip


# ----------------------------------------------------------------------------- one produced file
# outcomes, best first
BITWISE, SAME_VALUES, WITHIN, DIFFERENT, MISSING = (
    "bitwise", "identical values", "within tolerance", "different", "missing")


@dataclass
class FileResult:
    path: str
    kind: str
    recorded_sha256: str
    reproduced_sha256: str | None
    outcome: str
    compared_values: int = 0
    differing_values: int = 0
    ignored: list[str] = field(default_factory=list)
    difference: Difference | None = None  # the first difference no tolerance covers, else the largest
    note: str | None = None

    @property
    def reproduced(self) -> bool:
        return self.outcome in (BITWISE, SAME_VALUES, WITHIN)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["difference"] = asdict(self.difference) if self.difference else None
        return data


def compare_file(path: str, kind: str, recorded_sha256: str, original: Path | None, reproduced: Path,
                 tolerance: Tolerance, ignore: Sequence[str] = ()) -> FileResult:
    """Compare the re-executed ``reproduced`` file with the recorded one.

    ``original`` is the file on disk whose sha256 still equals the record (None when it changed or
    is gone: then only the hashes can be compared).
    """
    if not reproduced.is_file():
        return FileResult(path, kind, recorded_sha256, None, MISSING, note="the re-executed job did not write it")
    digest = sha256_file(reproduced)
    result = FileResult(path, kind, recorded_sha256, digest, BITWISE)
    if digest == recorded_sha256:
        return result
    result.outcome = DIFFERENT
    if original is None:
        result.note = "the original file is no longer on disk as recorded: only the sha256 could be compared"
        return result
    if kind not in COMPARATORS:
        result.difference = first_byte_difference(original, reproduced)
        result.note = "compared bitwise only (no value comparison is declared for this kind of file)"
        return result
    tally = Tally(tolerance, frozenset(ignore))
    try:
        COMPARATORS[kind](original, reproduced, tally)
    except Exception as e:  # an unreadable reproduction is a difference, not a crash of the audit
        result.note = f"cannot be compared as {kind}: {type(e).__name__}: {e}"
        return result
    result.compared_values, result.differing_values = tally.compared, tally.differing
    result.ignored = sorted(tally.ignored_seen)
    result.difference = tally.first()
    if tally.identical:
        result.outcome = SAME_VALUES
        result.note = "the bytes differ, every compared value is identical" + (
            f" (left out, as the stage declares: {', '.join(result.ignored)})" if result.ignored else "")
    elif tally.within:
        result.outcome = WITHIN
        result.note = f"{tally.differing} of {tally.compared} values differ, all within {tolerance.describe()}"
    else:
        result.note = f"{tally.differing} of {tally.compared} values differ" + (
            f" (tolerance {tolerance.describe()})" if tolerance != Tolerance() else " (exact comparison)")
    return result
