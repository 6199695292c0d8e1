"""The one way ``mmc`` draws and saves a figure: headless, atomic, byte-reproducible.

Every figure of the pipeline (``mmc figures``, the histogram of ``mmc similarity``) is saved with
:func:`save_figure`: the same data gives the same bytes, run after run, so figures can be
content-hashed and compared like any other output. Matplotlib would otherwise embed the date and
its version (SVG ``dc:date``, ``Creator``; PNG ``Software``) and salt SVG element ids randomly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DPI = 120
# What savefig may embed besides the drawing; None removes a key (no date, no version).
METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, with fixed SVG ids (``svg.hashsalt``)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "mmc"
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, base: Path, formats: Sequence[str] = ("png", "svg"), *, crop: bool = True) -> list[Path]:
    """Write ``fig`` as ``base.<format>`` for each format (atomically), close it, return the paths.

    ``crop`` trims the canvas to what is drawn (``bbox_inches="tight"``); without it the figure
    keeps its own size (for figures laid out with ``tight_layout``).
    """
    from mmc.files import atomic_path

    unknown = [f for f in formats if f not in METADATA]
    if unknown:
        raise ValueError(f"cannot save a figure as {unknown}: expected some of {sorted(METADATA)}")
    paths = []
    for ext in formats:
        path = base.with_name(f"{base.name}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(
                tmp,
                format=ext,
                dpi=DPI,
                bbox_inches="tight" if crop else None,
                metadata=METADATA[ext],
            )
        paths.append(path)
    pyplot().close(fig)
    return paths
