"""Tests for the synthetic shapes dataset generator (solo_d2.data.shapes)."""
import json
import math
import os

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from scipy.ndimage import binary_fill_holes

import solo_d2  # noqa: F401  (compat shims before detectron2)
from solo_d2.data import shapes
from solo_d2.data.shapes import (
    SHAPES_CLASSES,
    default_datasets_root,
    generate_shapes_dataset,
    render_shapes_image,
)

SIZE = 64
NUM = 8
SEED = 3


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def _files(image_dir):
    return sorted(os.listdir(image_dir))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    json_path, image_dir = generate_shapes_dataset(root, "train", NUM, SIZE, seed=SEED)
    return json_path, image_dir


def test_layout_and_return_value(dataset):
    json_path, image_dir = dataset
    root = os.path.dirname(image_dir)
    assert json_path == os.path.join(root, "annotations", "instances_train.json")
    assert image_dir == os.path.join(root, "train")
    assert _files(image_dir) == [f"{i:06d}.png" for i in range(NUM)]
    assert not [n for n in os.listdir(root) if ".tmp-" in n]  # temporary dir cleaned up


def test_deterministic(dataset, tmp_path):
    json_a, dir_a = dataset
    json_b, dir_b = generate_shapes_dataset(tmp_path / "b", "train", NUM, SIZE, seed=SEED)
    assert _read(json_a) == _read(json_b)
    assert _files(dir_a) == _files(dir_b)
    for name in _files(dir_a):
        assert _read(os.path.join(dir_a, name)) == _read(os.path.join(dir_b, name))

    # each image is seeded by (seed, split, index): independent of how many are generated
    _, dir_c = generate_shapes_dataset(tmp_path / "c", "train", 3, SIZE, seed=SEED)
    for name in _files(dir_c):
        assert _read(os.path.join(dir_a, name)) == _read(os.path.join(dir_c, name))
    # ... and different for another seed or split
    _, dir_d = generate_shapes_dataset(tmp_path / "d", "train", 1, SIZE, seed=SEED + 1)
    _, dir_e = generate_shapes_dataset(tmp_path / "e", "val", 1, SIZE, seed=SEED)
    first = _read(os.path.join(dir_a, "000000.png"))
    assert _read(os.path.join(dir_d, "000000.png")) != first
    assert _read(os.path.join(dir_e, "000000.png")) != first


def test_coco_json(dataset):
    json_path, image_dir = dataset
    coco = COCO(json_path)
    cats = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"]) for c in cats] == [
        (i + 1, name) for i, name in enumerate(SHAPES_CLASSES)
    ]
    assert 3 <= len(SHAPES_CLASSES) <= 6 and len(set(SHAPES_CLASSES)) == len(SHAPES_CLASSES)
    images = coco.loadImgs(coco.getImgIds())
    assert len(images) == NUM
    for im in images:
        assert (im["height"], im["width"]) == (SIZE, SIZE)
        assert os.path.isfile(os.path.join(image_dir, im["file_name"]))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and len({a["id"] for a in anns}) == len(anns)
    assert all(a["iscrowd"] == 0 for a in anns)
    with open(json_path) as f:
        params = json.load(f)["info"]["params"]
    assert (params["num_images"], params["image_size"], params["seed"]) == (NUM, SIZE, SEED)


def test_image_content(dataset):
    import cv2

    _, image_dir = dataset
    img = cv2.imread(os.path.join(image_dir, "000000.png"))
    assert img.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(img, render_shapes_image(SEED, "train", 0, SIZE).image)
    # textured background, not a flat colour
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > SIZE


def test_polygons_match_visible_masks(dataset):
    json_path, _ = dataset
    coco = COCO(json_path)
    checked = 0
    for index in range(NUM):
        sample = render_shapes_image(SEED, "train", index, SIZE)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
        expected = sample.annotated_instances
        assert len(anns) == len(expected)
        for ann, inst in zip(anns, expected):
            assert ann["category_id"] == inst.category_id
            assert ann["segmentation"] == inst.polygons
            assert ann["area"] == inst.area
            decoded = coco.annToMask(ann).astype(bool)
            # outer contours only: holes (shapes on top, fully inside) are filled
            assert _iou(decoded, binary_fill_holes(inst.visible)) > 0.99
            if inst.area >= 16:
                assert _iou(decoded, inst.visible) > 0.8
            ys, xs = np.nonzero(inst.visible)
            x0, y0 = xs.min(), ys.min()
            assert ann["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
            dys, dxs = np.nonzero(decoded)
            assert (dxs.min(), dys.min()) == (x0, y0)
            assert (dxs.max(), dys.max()) == (xs.max(), ys.max())
            checked += 1
    assert checked > 0


def test_polygons_valid_and_inside_image(dataset):
    json_path, _ = dataset
    with open(json_path) as f:
        anns = json.load(f)["annotations"]
    for ann in anns:
        assert ann["segmentation"]
        for poly in ann["segmentation"]:
            assert len(poly) >= 6 and len(poly) % 2 == 0
            xy = np.asarray(poly).reshape(-1, 2)
            assert (xy >= 0).all() and (xy <= SIZE).all()
        x, y, w, h = ann["bbox"]
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        assert ann["area"] >= shapes.MIN_VISIBLE_AREA


def _instances(num_images, size=SIZE, split="train"):
    for index in range(num_images):
        for inst in render_shapes_image(SEED, split, index, size).instances:
            yield index, inst


def test_tiny_shapes_present_and_valid():
    tiny = [inst for _, inst in _instances(40) if inst.annotated and inst.mask.sum() <= 64]
    assert len(tiny) >= 3  # sqrt(area) <= 8 px
    for inst in tiny:
        rles = mask_util.frPyObjects(inst.polygons, SIZE, SIZE)
        decoded = mask_util.decode(mask_util.merge(rles)).astype(bool)
        assert _iou(decoded, binary_fill_holes(inst.visible)) > 0.99
    # large shapes too: sqrt(area) of at least half the image
    assert any(math.sqrt(inst.mask.sum()) >= SIZE / 2 for _, inst in _instances(40))


def test_occluded_shapes_are_dropped(tmp_path):
    found = None
    for index in range(300):
        sample = render_shapes_image(SEED, "train", index, SIZE)
        hidden = [i for i in sample.instances if i.mask.any() and not i.visible.any()]
        if hidden:
            found = index, sample, hidden
            break
    assert found is not None, "no fully occluded shape in 300 images"
    index, sample, hidden = found
    assert all(not inst.annotated for inst in hidden)
    assert len(sample.annotated_instances) < len(sample.instances)
    json_path, _ = generate_shapes_dataset(tmp_path, "train", index + 1, SIZE, seed=SEED)
    coco = COCO(json_path)
    assert len(coco.getAnnIds(imgIds=[index + 1])) == len(sample.annotated_instances)


def test_shapes_cut_by_border_are_clipped():
    cut = []
    for _, inst in _instances(20):
        if not inst.annotated:
            continue
        x, y, w, h = inst.bbox
        if x == 0 or y == 0 or x + w == SIZE or y + h == SIZE:
            cut.append(inst)
    assert cut
    for inst in cut:
        for poly in inst.polygons:
            xy = np.asarray(poly).reshape(-1, 2)
            assert (xy >= 0).all() and (xy <= SIZE).all()


def test_existing_dataset_is_reused(tmp_path):
    json_path, image_dir = generate_shapes_dataset(tmp_path, "val", 3, SIZE, seed=SEED)
    paths = [json_path] + [os.path.join(image_dir, n) for n in _files(image_dir)]
    mtimes = [os.stat(p).st_mtime_ns for p in paths]
    assert generate_shapes_dataset(tmp_path, "val", 3, SIZE, seed=SEED) == (json_path, image_dir)
    assert [os.stat(p).st_mtime_ns for p in paths] == mtimes


@pytest.mark.parametrize(
    "changed", [{"seed": SEED + 1}, {"num_images": 2}, {"image_size": SIZE + 16}]
)
def test_regenerated_when_parameters_differ(tmp_path, changed):
    args = {"num_images": 3, "image_size": SIZE, "seed": SEED}
    json_path, image_dir = generate_shapes_dataset(tmp_path, "val", **args)
    old = _read(os.path.join(image_dir, "000000.png"))
    args.update(changed)
    generate_shapes_dataset(tmp_path, "val", **args)
    with open(json_path) as f:
        data = json.load(f)
    params = data["info"]["params"]
    assert all(params[k] == v for k, v in args.items())
    assert _files(image_dir) == [f"{i:06d}.png" for i in range(args["num_images"])]
    assert len(data["images"]) == args["num_images"]
    if "num_images" not in changed:
        assert _read(os.path.join(image_dir, "000000.png")) != old


def test_incomplete_dataset_is_regenerated(tmp_path):
    json_path, image_dir = generate_shapes_dataset(tmp_path, "val", 2, SIZE, seed=SEED)
    good = _read(json_path)
    os.remove(os.path.join(image_dir, "000001.png"))
    os.makedirs(tmp_path / ".val.tmp-leftover")  # an interrupted run
    generate_shapes_dataset(tmp_path, "val", 2, SIZE, seed=SEED)
    assert _files(image_dir) == ["000000.png", "000001.png"]
    assert not (tmp_path / ".val.tmp-leftover").exists()
    with open(json_path, "wb") as f:  # truncated json
        f.write(good[:len(good) // 2])
    generate_shapes_dataset(tmp_path, "val", 2, SIZE, seed=SEED)
    assert _read(json_path) == good


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": -3}, "num_images"),
        ({"image_size": 8}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"split": "../evil"}, "split"),
        ({"split": ""}, "split"),
        ({"root": ""}, "root"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, word):
    args = {"root": tmp_path, "split": "train", "num_images": 2, "image_size": SIZE}
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        generate_shapes_dataset(**args)
    assert not os.listdir(tmp_path)


def test_bad_argument_types(tmp_path):
    with pytest.raises(TypeError, match="num_images"):
        generate_shapes_dataset(tmp_path, "train", 2.5, SIZE)
    with pytest.raises(TypeError, match="image_size"):
        generate_shapes_dataset(tmp_path, "train", 2, True)


def test_default_datasets_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SOLO_D2_DATASETS", str(tmp_path))
    assert default_datasets_root() == str(tmp_path)
    assert shapes.shapes_root() == os.path.join(str(tmp_path), "shapes")
    monkeypatch.delenv("SOLO_D2_DATASETS")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(solo_d2.__file__)))
    assert default_datasets_root() == os.path.join(repo_root, "datasets")


def test_cli(tmp_path, capsys):
    shapes.main(["--root", str(tmp_path), "--num-train", "2", "--num-val", "1", "--size", "48"])
    out = capsys.readouterr().out
    assert str(tmp_path / "train") in out and str(tmp_path / "val") in out
    for split, num in (("train", 2), ("val", 1)):
        with open(tmp_path / "annotations" / f"instances_{split}.json") as f:
            assert len(json.load(f)["images"]) == num
    with pytest.raises(SystemExit):
        shapes.main(["--root", str(tmp_path / "x"), "--num-train", "0"])
    assert "--num-train" in capsys.readouterr().err


def test_dense_small_layout_draws_15_to_30_small_shapes(tmp_path):
    """The ``dense_small`` layout (shapes_dense_*): 15-30 shapes of sqrt(area) 10-20 px per
    image; the default datasets keep their parameters (no layout key) and files."""
    from solo_d2.data.shapes_render import LAYOUTS

    counts, scales = [], []
    for index in range(6):
        sample = render_shapes_image(SEED, "val", index, 256, layout="dense_small")
        counts.append(len(sample.instances))
        # shapes inside the image (not cut by the border): their drawn area is the layout's
        scales += [
            math.sqrt(inst.mask.sum())
            for inst in sample.instances
            if not (inst.mask[0].any() or inst.mask[-1].any() or inst.mask[:, 0].any())
            and not inst.mask[:, -1].any()
        ]
    assert all(15 <= n <= 30 for n in counts), counts
    inside = [s for s in scales if s > 0]
    assert 9.0 <= np.median(inside) <= 20.5 and max(inside) <= 21.0, inside
    json_file, _ = generate_shapes_dataset(str(tmp_path), "val", 2, 256, SEED, "dense_small")
    assert json.load(open(json_file))["info"]["params"]["layout"] == "dense_small"
    json_file, _ = generate_shapes_dataset(str(tmp_path / "default"), "val", 2, 64, SEED)
    assert "layout" not in json.load(open(json_file))["info"]["params"]
    assert set(LAYOUTS) == {"default", "dense_small"}
    with pytest.raises(ValueError, match="unknown shapes layout 'crowded'"):
        generate_shapes_dataset(str(tmp_path), "val", 2, 64, SEED, "crowded")
