"""Which jobs an audit re-executes: a seeded sample, stratified over stages, cheap jobs first."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from mmc.records import JobRecord


def duration_s(record: JobRecord) -> float:
    """How long the job took, from its record (inf when the record lacks a time)."""
    if record.start_time is None or record.end_time is None:
        return math.inf
    return (record.end_time - record.start_time) / 1000.0


def choose(candidates: Sequence[JobRecord], k: int, seed: int, stage_order: Sequence[str]) -> list[JobRecord]:
    """``k`` of ``candidates``: one job per stage in turn, stages in ``stage_order`` (upstream first;
    others after, by name), until ``k`` are chosen or none is left.

    Within a stage the jobs that took at most the stage's median time come first, in an order the
    seed draws; then the others, again in a seeded order. The same records and seed give the same
    sample; with ``k`` at least the number of stages every stage is covered.
    """
    rng = random.Random(seed)
    by_stage: dict[str, list[JobRecord]] = {}
    for record in sorted(candidates, key=lambda r: (r.stage, r.name, r.record_id or "")):
        by_stage.setdefault(record.stage, []).append(record)
    rank = {stage: i for i, stage in enumerate(stage_order)}
    stages = sorted(by_stage, key=lambda s: (rank.get(s, len(rank)), s))
    queues = {}
    for stage in stages:
        jobs = by_stage[stage]
        times = sorted(duration_s(r) for r in jobs)
        median = times[(len(times) - 1) // 2]
        cheap = [r for r in jobs if duration_s(r) <= median]
        rest = [r for r in jobs if duration_s(r) > median]
        rng.shuffle(cheap)
        rng.shuffle(rest)
        queues[stage] = cheap + rest
    chosen: list[JobRecord] = []
    while len(chosen) < k and any(queues.values()):
        for stage in stages:
            if queues[stage] and len(chosen) < k:
                chosen.append(queues[stage].pop(0))
    return chosen
