"""What tracking costs: per-job recorder overhead, and loading N records into the SQLite store.

    PYTHONPATH=$PWD python benchmarks/tracking_overhead.py [--jobs 50]

Prints the first job's overhead (git is asked once per process and cached), the mean of the
following ones, and the wall time of one `load_records` call for all records, then of a second
(no-op) call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    from mmc import config, mlflow_store, tracking

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        Path("config.yaml").write_text(json.dumps({"run_name": "bench", "results_dir": "results"}))
        cfg = config.load("config.yaml")
        mlflow_store.start_invocation(cfg, "config.yaml")
        Path("out.csv").write_text("a,b\n1,2\n")
        seconds = []
        for i in range(args.jobs):
            start = time.perf_counter()
            with tracking.job("segment", cfg, wildcards={"model": f"m{i}", "dataset": "d"}) as rec:
                rec.log_params({"evaluation": {"resolution": 480}})
                rec.log_metrics({"miou": 0.5}, step=0)
                rec.produced("out.csv")
                rec.log_artifact("out.csv")
            seconds.append(time.perf_counter() - start)
        print(f"job recorder: first job {seconds[0] * 1000:.1f} ms, then mean "
              f"{statistics.mean(seconds[1:]) * 1000:.2f} ms over {args.jobs - 1} jobs "
              f"(torch imported: {'torch' in sys.modules})")
        start = time.perf_counter()
        report = mlflow_store.load_records(cfg, status="finished")
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = mlflow_store.load_records(cfg)
        second = time.perf_counter() - start
        print(f"load into SQLite: {len(report.loaded)} records in {first:.2f} s (incl. mlflow import and store "
              f"creation); no-op reload ({len(again.skipped)} skipped) in {second:.2f} s")


if __name__ == "__main__":
    main()
