from __future__ import annotations

import json
import math
import subprocess
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from workflow_helpers import MMC

from mmc.data import synthetic

SPEC = synthetic.SyntheticSpec(
    images=24, unlabelled_images=6, size=96, seed=3, val_fraction=0.25, objects=(2, 4), object_scale=(0.25, 0.45), void_width=1
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "synthetic", SPEC)


def labels(root, image_id):
    voc = root / "VOCdevkit" / "VOC2012"
    classes = Image.open(voc / "SegmentationClass" / f"{image_id}.png")
    objects = Image.open(voc / "SegmentationObject" / f"{image_id}.png")
    assert classes.mode == objects.mode == "P"  # indexed PNGs, as VOC's
    return np.array(classes), np.array(objects)


def scenes(root):
    return [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()]


def test_voc_layout_and_splits(dataset):
    voc = dataset / "VOCdevkit" / "VOC2012"
    train = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(val) == 6 and len(train) == 18 and not set(train) & set(val)
    for image_id in train + val:
        image = Image.open(voc / "JPEGImages" / f"{image_id}.jpg")
        assert image.size == (96, 96) and image.mode == "RGB"
    assert len(list((dataset / "unlabelled").glob("*.jpg"))) == 6
    meta = json.loads((dataset / "classes.json").read_text())
    assert [c["name"] for c in meta["classes"]] == [c.name for c in synthetic.CATEGORIES]


def test_every_instance_has_one_class_and_matches_its_drawing(dataset):
    for scene in scenes(dataset):
        classes, objects = labels(dataset, scene["image_id"])
        drawn = {o["object_id"]: o for o in scene["objects"]}
        present = set(np.unique(objects)) - {0, synthetic.VOID}
        assert present == set(drawn)
        assert SPEC.objects[0] <= len(drawn) <= SPEC.objects[1] or len(drawn) >= 1
        for object_id, obj in drawn.items():
            pixels = objects == object_id
            assert set(np.unique(classes[pixels])) == {obj["class_id"]}
            # geometry from the recorded drawing, written independently of the generator:
            ys, xs = np.nonzero(pixels)
            distance = np.hypot(ys - obj["center"][0], xs - obj["center"][1])
            assert distance.max() <= obj["radius"] * math.sqrt(2) + 1
            assert pixels.sum() <= math.pi * obj["radius"] ** 2 * 2  # never larger than the bounding disc
            side = 2 * obj["radius"] / SPEC.size
            assert SPEC.object_scale[0] - 1e-9 <= side <= SPEC.object_scale[1] + 1e-9
        assert np.array_equal(classes == 0, objects == 0)
        assert np.array_equal(classes == synthetic.VOID, objects == synthetic.VOID)


def test_void_only_on_borders(dataset):
    for index, scene in enumerate(scenes(dataset)):
        _, objects = labels(dataset, scene["image_id"])
        void = objects == synthetic.VOID
        assert void.any()
        # redraw the same scene without a void band, find its boundaries with 4-neighbour
        # comparisons, and check: void lies within the band width of a boundary, and covers it.
        rng = np.random.default_rng([SPEC.seed, synthetic.LABELLED_STREAM, index])
        _, _, drawn, _ = synthetic.draw_scene(rng, SPEC.size, SPEC.objects, SPEC.object_scale, void_width=0)
        boundary = np.zeros_like(void)
        boundary[:-1] |= drawn[:-1] != drawn[1:]
        boundary[1:] |= drawn[:-1] != drawn[1:]
        boundary[:, :-1] |= drawn[:, :-1] != drawn[:, 1:]
        boundary[:, 1:] |= drawn[:, :-1] != drawn[:, 1:]
        near_boundary = ndimage.binary_dilation(boundary, structure=np.ones((3, 3)), iterations=SPEC.void_width)
        assert not (void & ~near_boundary).any(), "void away from every object border"
        assert void[boundary].all(), "an object border without void"
        assert np.array_equal(objects[~void], drawn[~void])


def test_visible_objects_keep_at_least_half_their_area(dataset):
    counts = []
    for scene in scenes(dataset):
        _, objects = labels(dataset, scene["image_id"])
        counts.append(len(scene["objects"]))
        for obj in scene["objects"]:
            visible = (objects == obj["object_id"]).sum()
            assert visible >= 8, f"{scene['image_id']} object {obj['object_id']} nearly hidden"
    assert min(counts) >= 1 and max(counts) <= SPEC.objects[1]
    assert np.mean(counts) >= SPEC.objects[0]  # the scene rarely fills up before the requested count


def test_same_arguments_give_byte_identical_files(tmp_path):
    args = ["data", "synthetic", "--images", "5", "--unlabelled", "2", "--size", "64", "--seed", "7"]
    for name in ("a", "b"):
        run = subprocess.run([*MMC, *args, "--out", str(tmp_path / name)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 15
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = synthetic.generate(tmp_path / "c", synthetic.SyntheticSpec(5, 2, 64, 8, 0.5, (1, 4), (0.2, 0.5), 1))
    assert (other / "VOCdevkit/VOC2012/JPEGImages/syn_000000.jpg").read_bytes() != (
        tmp_path / "a/VOCdevkit/VOC2012/JPEGImages/syn_000000.jpg"
    ).read_bytes()


def test_image_i_does_not_depend_on_how_many_are_made(tmp_path):
    small = synthetic.generate(tmp_path / "small", synthetic.SyntheticSpec(2, 0, 64, 1, 0.5, (1, 4), (0.2, 0.5), 1))
    large = synthetic.generate(tmp_path / "large", synthetic.SyntheticSpec(6, 0, 64, 1, 0.5, (1, 4), (0.2, 0.5), 1))
    rel = "VOCdevkit/VOC2012/SegmentationObject/syn_000001.png"
    assert (small / rel).read_bytes() == (large / rel).read_bytes()


def object_colours(root, scenes_):
    """Per drawn object: its class, palette index and the mean RGB of its labelled pixels in the JPEG."""
    classes, palette, means, recorded = [], [], [], []
    for scene in scenes_:
        image = np.asarray(Image.open(root / "VOCdevkit/VOC2012/JPEGImages" / f"{scene['image_id']}.jpg"), float)
        _, objects = labels(root, scene["image_id"])
        for obj in scene["objects"]:
            pixels = image[objects == obj["object_id"]]
            classes.append(obj["class_id"])
            palette.append(obj["palette_index"])
            means.append(pixels.mean(axis=0))
            recorded.append(obj["colour"])
    return np.array(classes), np.array(palette), np.array(means), np.array(recorded, float)


def knn_accuracy(features, targets, k=15, folds=5):
    """Cross-validated accuracy of a k-nearest-neighbour vote (standardised features), in numpy."""
    x = (features - features.mean(axis=0)) / features.std(axis=0)
    order = np.random.default_rng(0).permutation(len(x))
    correct = 0
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        distances = ((x[test, None, :] - x[None, train, :]) ** 2).sum(axis=-1)
        nearest = targets[train][np.argsort(distances, axis=1)[:, :k]]
        votes = [np.bincount(row).argmax() for row in nearest]
        correct += int((np.array(votes) == targets[test]).sum())
    return correct / len(x)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    spec = synthetic.SyntheticSpec(200, 0, 96, 5, 0.5, (2, 5), (0.2, 0.45), 1)
    root = synthetic.generate(tmp_path_factory.mktemp("many") / "synthetic", spec)
    return root, scenes(root)


def test_colour_carries_no_class_information(many):
    """A k-NN classifier on an object's mean colour predicts its class no better than chance, while the
    same classifier predicts the object's palette entry from it almost perfectly (so it can see colour)."""
    root, drawn = many
    classes, palette, means, recorded = object_colours(root, drawn)
    n = len(classes)
    assert n >= 400 and set(classes) == {c.class_id for c in synthetic.CATEGORIES}
    chance = np.bincount(classes).max() / n  # always answering the most frequent class
    accuracy = knn_accuracy(means, classes)
    assert accuracy < chance + 3 * math.sqrt(chance * (1 - chance) / n), (accuracy, chance)
    assert knn_accuracy(means, palette) > 0.9
    # the texture is zero-mean over the object: its mean colour is the recorded colour (JPEG, noise and
    # the odd clipped pixel aside)
    assert np.median(np.abs(means - recorded)) < 3.0
    assert all(tuple(c) in synthetic.PALETTE for c in np.array(synthetic.PALETTE)[palette].tolist())


def test_categories_repeat_within_scenes_in_other_colours_and_textures_vary(many):
    _, drawn = many
    repeated = shared_colour = 0
    periods, angles = [], []
    for scene in drawn:
        by_class: dict[int, list] = {}
        for obj in scene["objects"]:
            by_class.setdefault(obj["class_id"], []).append(obj)
            periods.append(obj["texture_period"])
            angles.append(obj["texture_angle"])
            assert obj["texture"] == synthetic.CATEGORIES[obj["class_id"] - 1].texture_name
        for group in by_class.values():
            if len(group) > 1:
                repeated += len(group)
                shared_colour += len(group) - len({o["palette_index"] for o in group})
    objects = sum(len(s["objects"]) for s in drawn)
    assert repeated / objects > 0.3  # several instances of one category in many scenes
    assert shared_colour / repeated < 0.3  # and mostly in different colours
    side = 96
    assert min(periods) >= synthetic.TEXTURE_PERIOD[0] * side and max(periods) <= synthetic.TEXTURE_PERIOD[1] * side
    assert np.ptp(periods) > 0.5 * (synthetic.TEXTURE_PERIOD[1] - synthetic.TEXTURE_PERIOD[0]) * side
    assert np.ptp(angles) > 2.5  # orientations over [0, pi)


def test_a_thousand_images(tmp_path):
    start = time.perf_counter()
    synthetic.generate(tmp_path / "big", synthetic.SyntheticSpec(1000, 0, 128, 0, 0.5, (1, 4), (0.2, 0.5), 1))
    # the time is printed (pytest -s), never asserted: tests assert behaviour
    print(f"\n1,000 synthetic scenes at 128 px: {time.perf_counter() - start:.1f} s")
    voc = tmp_path / "big" / "VOCdevkit" / "VOC2012"
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 1000
    assert len(list((voc / "SegmentationObject").glob("*.png"))) == 1000


def test_cli_rejects_bad_flags_with_the_schema_bounds(tmp_path):
    run = subprocess.run([*MMC, "data", "synthetic", "--out", str(tmp_path / "x"), "--size", "8"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "synthetic.size: 8 is out of range: expected a number >= 32" in run.stderr
    assert not (tmp_path / "x").exists()
