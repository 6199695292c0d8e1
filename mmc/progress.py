"""Progress of long loops (images evaluated, bytes downloaded): where a person will look for it.

- on a terminal: a tqdm bar on stderr;
- in a log file (a Snakemake rule sends stderr to ``{results_dir}/logs/...``, a SLURM job to its
  output file): one plain line every ``MMC_PROGRESS_INTERVAL`` seconds (default 60), then a last
  line when the loop ends, if any was written; a short loop writes nothing;
- ``MMC_PROGRESS=off`` (the test suite sets it): nothing. ``MMC_PROGRESS=bar`` / ``lines`` force a
  mode; a command's own ``--progress/--no-progress`` wins over the variable.

A line reads ``segment mmc on voc: 1200/5000 images (24%), 8.1 images/s, 2m28s elapsed, about 7m49s left``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

MODE_ENV = "MMC_PROGRESS"  # auto (default) | bar | lines | off
INTERVAL_ENV = "MMC_PROGRESS_INTERVAL"  # seconds between two lines in a log
DEFAULT_INTERVAL_S = 60.0
MODES = ("auto", "bar", "lines", "off")

T = TypeVar("T")


def resolve_mode(requested: bool | str | None = None, stream: IO[str] | None = None) -> str:
    """``bar``, ``lines`` or ``off``: ``requested`` (True = a bar, False = off, or a mode name), else
    ``MMC_PROGRESS``, else a bar on a terminal and lines elsewhere."""
    if requested is True:
        return "bar"
    if requested is False:
        return "off"
    mode = (requested or os.environ.get(MODE_ENV) or "auto").strip().lower()
    if mode not in MODES:
        mode = "auto"
    if mode == "auto":
        stream = stream or sys.stderr
        return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"
    return mode


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _amount(value: float, unit: str) -> str:
    if unit != "B":
        return f"{int(value)}"
    for scale, name in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if value >= scale:
            return f"{value / scale:.1f} {name}"
    return f"{int(value)} B"


class Progress:
    """Counts work done; shows it as a bar, as periodic lines, or not at all (:func:`resolve_mode`)."""

    def __init__(self, total: int | None, desc: str, unit: str = "image", *, mode: bool | str | None = None,
                 initial: int = 0, stream: IO[str] | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.done = initial
        self.initial = initial
        self.started = self.last_line = time.monotonic()
        self.interval = _interval()
        self.lines = 0
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            byte_unit = unit == "B"
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=False,
                            dynamic_ncols=True, unit_scale=byte_unit, unit_divisor=1024 if byte_unit else 1000)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _line(self, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self.started
        units = self.unit if self.unit == "B" else f"{self.unit}s"
        count = _amount(self.done, self.unit)
        if self.total:
            count += f"/{_amount(self.total, self.unit)} {units} ({100 * self.done / self.total:.0f}%)"
        else:
            count += f" {units}"
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        speed = f"{_amount(rate, self.unit)}/s" if self.unit == "B" else f"{rate:.1f} {units}/s"
        parts = [count, speed, f"{_duration(elapsed)} elapsed"]
        if final:
            parts[-1] = f"done in {_duration(elapsed)}"
        elif self.total and rate > 0:
            parts.append(f"about {_duration((self.total - self.done) / rate)} left")
        print(f"{self.desc}: {', '.join(parts)}", file=self.stream, flush=True)
        self.last_line = now
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.lines:
            self._line(final=True)
            self.lines = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "image",
          mode: bool | str | None = None) -> Iterator[T]:
    """Yield ``items`` while counting them (one per item); ``total`` defaults to ``len(items)``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, mode=mode) as progress:
        for item in items:
            yield item
            progress.update()
