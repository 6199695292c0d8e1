"""The result files of the evaluation: typed, written and read back unchanged, bad files named."""

from __future__ import annotations

import dataclasses
import json

import pytest
from result_files import segment_summary, similarity_result

from mmc.errors import MMCError
from mmc.evaluation.summary import (
    SegmentationSummary,
    SimilarityResult,
    read_segmentation_summaries,
    read_segmentation_summary,
    read_similarity_result,
    read_similarity_results,
)

# The keys of the files, in the order they are written (docs/evaluation.md lists the same).
SUMMARY_KEYS = [
    "model", "dataset", "n_objects", "n_skipped", "thresholds", "miou_by_tau", "best_tau", "best_miou",
    "demo_tau", "miou_at_demo_tau", "oracle_miou", "checkpoint_sha256", "settings", "features", "seed",
]  # fmt: skip
SIMILARITY_KEYS = [
    "model", "dataset", "n_intra", "n_inter", "mean_intra", "mean_inter", "overlap",
    "best_balanced_accuracy", "best_threshold", "bins", "hist_intra", "hist_inter", "checkpoint_sha256",
    "settings", "features", "seed",
]  # fmt: skip


def test_files_round_trip(tmp_path):
    summary = dataclasses.replace(segment_summary("m", "d", 0), features={"computed": 3, "cached": 0})
    (tmp_path / "summary.json").write_text(summary.to_json())
    assert list(json.loads(summary.to_json())) == SUMMARY_KEYS
    assert read_segmentation_summary(tmp_path / "summary.json") == summary
    result = similarity_result("m", "d", 0)
    (tmp_path / "similarity.json").write_text(result.to_json())
    assert list(json.loads(result.to_json())) == SIMILARITY_KEYS
    assert read_similarity_result(tmp_path / "similarity.json") == result


def test_summary_helpers():
    summary = segment_summary("m", "d", 0)
    assert summary.miou_at(0.9) == summary.miou_at_demo_tau == summary.miou_by_tau["0.90"]
    taus, mious = dataclasses.replace(summary, miou_by_tau={"0.50": 0.3, "0.00": 0.1, "0.95": 0.05}).curve()
    assert taus == [0.0, 0.5, 0.95] and mious == [0.1, 0.3, 0.05]


def test_bad_files_are_named_with_what_is_missing(tmp_path):
    path = tmp_path / "summary.json"
    raw = json.loads(segment_summary("m", "d", 0).to_json())
    del raw["best_miou"], raw["oracle_miou"], raw["settings"]  # settings and features are optional
    path.write_text(json.dumps(raw))
    with pytest.raises(MMCError, match=r"summary\.json: missing key\(s\) best_miou, oracle_miou \(expected"):
        read_segmentation_summary(path)
    path.write_text("[1, 2]")
    with pytest.raises(MMCError, match=r"summary\.json: expected the summary\.json of mmc segment \(a JSON object\)"):
        read_segmentation_summary(path)
    with pytest.raises(MMCError, match=r"absent\.json: cannot read"):
        read_similarity_result(tmp_path / "absent.json")
    raw = json.loads(similarity_result("m", "d", 0, bins=8).to_json())
    raw["bins"] = raw["bins"][:-1]
    (tmp_path / "similarity.json").write_text(json.dumps(raw))
    with pytest.raises(MMCError, match=r"similarity\.json: bins has 8 edges for histograms of 8 and 8 bins"):
        read_similarity_result(tmp_path / "similarity.json")


def test_a_model_and_dataset_read_twice_is_an_error(tmp_path):
    for i, dataset in enumerate(("a", "b", "a")):
        (tmp_path / f"{i}.json").write_text(segment_summary("m", dataset, i).to_json())
        (tmp_path / f"s{i}.json").write_text(similarity_result("m", dataset, i).to_json())
    read = read_segmentation_summaries([tmp_path / "0.json", tmp_path / "1.json"])
    assert [s.dataset for s in read] == ["a", "b"] and all(isinstance(s, SegmentationSummary) for s in read)
    with pytest.raises(MMCError, match=r"2\.json: model 'm' on dataset 'a' also in .*0\.json"):
        read_segmentation_summaries([tmp_path / f"{i}.json" for i in range(3)])
    with pytest.raises(MMCError, match=r"s2\.json: model 'm' on dataset 'a' also in .*s0\.json"):
        read_similarity_results([tmp_path / f"s{i}.json" for i in range(3)])
    assert all(isinstance(r, SimilarityResult) for r in read_similarity_results([tmp_path / "s1.json"]))
