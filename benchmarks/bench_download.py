"""Download throughput on loopback: mmc's downloader vs curl, same file, same server, same run.

    PYTHONPATH=$PWD python benchmarks/bench_download.py [--size-mb 256] [--repeats 3]

The server is the tests' stdlib server (tests/loopback_server.py) sending the file with sendfile.
Each client downloads the file ``--repeats`` times, alternating; the best and the median time of
each are reported (the ratio uses the best: other processes on the machine only ever slow a run).
mmc's time includes what it always does: hashing (sha256, plus md5 when asked) while receiving and
the final rename; "curl + sha256sum" is the same work done with the standard tools. Prints MiB/s for each and the ratio mmc / curl (target >= 0.8).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from loopback_server import LoopbackServer  # noqa: E402

from mmc.data.download import download  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    curl = shutil.which("curl")
    if curl is None:
        print("curl not found: install it (apt-get install -y curl)", file=sys.stderr)
        return 1
    sha256sum = shutil.which("sha256sum")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        scratch = Path(scratch)
        source = scratch / "payload.bin"
        with open(source, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1 << 20))
        size = source.stat().st_size
        sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
        times: dict[str, list[float]] = {"curl": [], "curl + sha256sum": [], "mmc (sha256)": [], "mmc (sha256+md5)": []}
        md5 = hashlib.md5(source.read_bytes()).hexdigest()
        with LoopbackServer({"payload.bin": source}) as server:
            url = server.url("payload.bin")
            for _ in range(args.repeats):
                out = scratch / "curl.bin"
                start = time.perf_counter()
                subprocess.run([curl, "-sS", "--fail", "-o", str(out), url], check=True)
                times["curl"].append(time.perf_counter() - start)
                if sha256sum:
                    digest = subprocess.run([sha256sum, str(out)], check=True, capture_output=True, text=True).stdout.split()[0]
                    times["curl + sha256sum"].append(time.perf_counter() - start)
                    assert digest == sha256
                assert out.stat().st_size == size
                out.unlink()
                for label, extra in (("mmc (sha256)", {}), ("mmc (sha256+md5)", {"md5": md5})):
                    out = scratch / "mmc.bin"
                    start = time.perf_counter()
                    download(url, out, size=size, sha256=sha256, progress=False, **extra)
                    times[label].append(time.perf_counter() - start)
                    out.unlink()
    mib = size / (1 << 20)
    times = {label: t for label, t in times.items() if t}
    best = {label: min(t) for label, t in times.items()}
    print(f"file: {mib:.0f} MiB over http://127.0.0.1, {args.repeats} runs each; load average {os.getloadavg()[0]:.1f}")
    for label, t in times.items():
        print(f"  {label:<18} best {best[label]:6.3f} s {mib / best[label]:7.1f} MiB/s   median {statistics.median(t):6.3f} s")
    for label in ("mmc (sha256)", "mmc (sha256+md5)"):
        print(f"ratio {label} / curl: {best['curl'] / best[label]:.2f}  (target >= 0.8)")
    if "curl + sha256sum" in best:
        print(f"ratio mmc (sha256) / (curl + sha256sum), both download and verify: {best['curl + sha256sum'] / best['mmc (sha256)']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
