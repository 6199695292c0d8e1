"""Progress of long loops (mmc.progress): a bar on a terminal, periodic lines in a log, nothing in tests."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios

from mmc import progress


def test_lines_in_a_log_every_interval_and_a_last_one(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # a line at every update
    log = io.StringIO()
    with progress.Progress(4, "segment m on voc", mode="lines", stream=log) as bar:
        for _ in range(4):
            bar.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith("segment m on voc: 1/4 images (25%), ")
    assert "images/s" in lines[0] and "about " in lines[0] and " left" in lines[0]
    assert lines[-1].startswith("segment m on voc: 4/4 images (100%)") and "done in " in lines[-1]


def test_a_short_loop_in_a_log_writes_nothing(monkeypatch):
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)  # the default: a line a minute
    log = io.StringIO()
    assert list(progress.track(range(50), "similarity m on voc", mode="lines")) == list(range(50))
    with progress.Progress(50, "x", mode="lines", stream=log) as bar:
        bar.update(50)
    assert log.getvalue() == ""


def test_bytes_are_counted_in_binary_units(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    log = io.StringIO()
    with progress.Progress(4 * 1024**2, "val2017.zip", unit="B", mode="lines", stream=log, initial=1024**2) as bar:
        bar.update(1024**2)
    assert log.getvalue().splitlines()[0].startswith("val2017.zip: 2.0 MiB/4.0 MiB B (50%), ")


def test_mode_follows_the_terminal_the_variable_and_the_flag(monkeypatch):
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert progress.resolve_mode(None, terminal) == "bar"
            with progress.Progress(3, "segment m on voc", stream=terminal) as bar:
                bar.update(3)
            terminal.flush()
            assert select.select([leader], [], [], 10)[0], "nothing was drawn on the terminal"
            shown = os.read(leader, 4096).decode()
            assert "segment m on voc:" in shown and "/3 [" in shown and "image/s" in shown  # a tqdm bar
            assert progress.resolve_mode(False, terminal) == "off"
            monkeypatch.setenv(progress.MODE_ENV, "lines")
            assert progress.resolve_mode(None, terminal) == "lines"
    finally:
        os.close(leader)
        os.close(follower)
    assert progress.resolve_mode(None, io.StringIO()) == "lines"  # a file is a log
    assert progress.resolve_mode(True, io.StringIO()) == "bar"  # --progress forces the bar
    monkeypatch.setenv(progress.MODE_ENV, "off")  # what the test suite sets (conftest)
    log = io.StringIO()
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    with progress.Progress(2, "x", stream=log) as bar:
        bar.update(2)
    assert log.getvalue() == ""
