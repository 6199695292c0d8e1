"""The COCO, ADE20K and DAVIS-2017 readers on tiny datasets built in their exact layouts with known objects."""

from __future__ import annotations

import numpy as np
import pytest
from dataset_fixtures import make_ade20k, make_coco, make_davis
from PIL import Image

from mmc import config
from mmc.data.readers import open_reader
from mmc.errors import MMCError


def dataset_config(fmt: str, root, **options):
    raw = {"run_name": "t", "datasets": {"d": {"format": fmt, "root": str(root), **options}}}
    return config.freeze(config.resolve(raw)).datasets["d"]


# ----------------------------------------------------------------------------- COCO
@pytest.mark.parametrize("split", ["val", "val2017"])
def test_coco_objects_at_original_size_without_crowd(tmp_path, split):
    expected = make_coco(tmp_path)
    reader = open_reader(dataset_config("coco", tmp_path, split=split))
    samples = list(reader)
    assert len(reader) == len(samples) == 3
    assert [s.image_id for s in samples] == [str(i) for i in sorted(expected)]
    for sample in samples:
        want = expected[int(sample.image_id)]
        assert sample.image.shape == (*want["size"], 3) and sample.image.dtype == np.uint8
        assert {o.object_id for o in sample.objects} == set(want["objects"])  # the crowd annotation is not a target
        for obj in sample.objects:
            category, mask = want["objects"][obj.object_id]
            assert obj.class_id == category
            assert obj.mask.shape == want["size"] and obj.mask.dtype == bool
            np.testing.assert_array_equal(obj.mask, mask)
        assert not sample.void.any()


def test_coco_crowd_as_void(tmp_path):
    expected = make_coco(tmp_path, n=1)
    (sample,) = open_reader(dataset_config("coco", tmp_path, crowd_as_void=True))
    np.testing.assert_array_equal(sample.void, expected[int(sample.image_id)]["crowd"])
    assert len(sample.objects) == 2


def test_coco_max_images_and_missing_annotations(tmp_path):
    make_coco(tmp_path)
    assert len(open_reader(dataset_config("coco", tmp_path, max_images=2))) == 2
    (tmp_path / "annotations/instances_val2017.json").unlink()
    with pytest.raises(MMCError, match=r"instances_val2017\.json: COCO annotations not found"):
        open_reader(dataset_config("coco", tmp_path))


# ----------------------------------------------------------------------------- ADE20K
@pytest.mark.parametrize("split", ["val", "validation"])
def test_ade20k_one_object_per_class_and_void_zero(tmp_path, split):
    expected = make_ade20k(tmp_path)
    samples = list(open_reader(dataset_config("ade20k", tmp_path, split=split)))
    assert [s.image_id for s in samples] == sorted(expected)
    for i, sample in enumerate(samples):
        labels = expected[sample.image_id]
        assert [(o.object_id, o.class_id) for o in sample.objects] == [(1, 1), (5 + i, 5 + i), (150, 150)]
        wall = sample.objects[0].mask
        assert wall.sum() == 8 * 32 and wall[:8].all()  # class 1 only: the void pixels are not "wall"
        assert not (wall & sample.void).any()
        assert sample.void.sum() == (labels == 0).sum() and sample.void[9, 0]
        two_regions = sample.objects[2].mask
        assert two_regions.sum() == 80 and two_regions[11, 21] and two_regions[17, 21]


def test_ade20k_label_size_mismatch(tmp_path):
    make_ade20k(tmp_path, n=1)
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(tmp_path / "annotations/validation/ADE_val_00000001.png")
    with pytest.raises(MMCError, match="image is 32x24 but its labels are 5x5"):
        list(open_reader(dataset_config("ade20k", tmp_path)))


# ----------------------------------------------------------------------------- DAVIS-2017
def test_davis_every_object_in_every_frame(tmp_path):
    expected = make_davis(tmp_path)
    samples = list(open_reader(dataset_config("davis", tmp_path)))
    assert [s.image_id for s in samples] == sorted(expected)
    for sample in samples:
        labels = expected[sample.image_id]
        ids = sorted(int(v) for v in np.unique(labels) if v not in (0, 255))
        assert [o.object_id for o in sample.objects] == ids
        for obj in sample.objects:
            np.testing.assert_array_equal(obj.mask, labels == obj.object_id)
        np.testing.assert_array_equal(sample.void, labels == 255)
        assert sample.image.shape == (*labels.shape, 3)


def test_davis_frame_step_and_indexed_png_required(tmp_path):
    make_davis(tmp_path, {"bike-packing": 5, "blackswan": 3})
    ids = [s.image_id for s in open_reader(dataset_config("davis", tmp_path, frame_step=2))]
    assert ids == ["bike-packing/00000", "bike-packing/00002", "bike-packing/00004", "blackswan/00000", "blackswan/00002"]
    Image.new("RGB", (26, 18)).save(tmp_path / "Annotations/480p/blackswan/00000.png")
    with pytest.raises(MMCError, match=r"expected an indexed \(palette\) or greyscale PNG label map, got mode RGB"):
        list(open_reader(dataset_config("davis", tmp_path)))
