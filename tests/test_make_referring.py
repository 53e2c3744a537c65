"""crobim-make-referring on small rasters it writes: polygons (GeoJSON in the raster's CRS), boxes (CSV, VOC)
and COCO RLE. Every expression is checked against its target by a reading written here, independent of the
generator's own checker."""

import json
import os
import re

import numpy as np
import pytest
import rasterio
from PIL import Image
from pycocotools import mask as mask_utils
from rasterio.transform import from_origin

from crobim_d2.data import load_gt_mask, load_rrsis_jsonl
from crobim_d2.data.referring import (
    REFERRING_GRAMMAR,
    CropLayout,
    ReferringInputError,
    ReferringParams,
    Source,
    make_referring,
)
from crobim_d2.data.referring.cli import main
from crobim_d2.data.referring.grammar import POSITION_NAMES, BoxReferent

SIZE = 240
LAYOUT = CropLayout(crop_size=80, stride=40, block_size=120)
PARAMS = ReferringParams(layout=LAYOUT, expressions_per_crop=4, seed=3)
ORIGIN, RES = (500000.0, 4000480.0), 2.0  # a north-up UTM raster, 2 m pixels
CRS = "EPSG:32633"


def _rects(rng, n, lo, hi):
    """``n`` non-touching axis-aligned rectangles (x0, y0, x1, y1) in pixels."""
    taken = np.zeros((SIZE, SIZE), bool)
    out = []
    while len(out) < n:
        w, h = rng.integers(lo, hi, 2)
        x0, y0 = rng.integers(0, SIZE - 1, 2)
        x1, y1 = min(SIZE + 6, x0 + w), min(SIZE + 6, y0 + h)  # some cross the raster's edge
        if not taken[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2].any():
            taken[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
            out.append((int(x0), int(y0), int(x1), int(y1)))
    return out


def _mask(rect):
    m = np.zeros((SIZE, SIZE), bool)
    x0, y0, x1, y1 = rect
    m[y0:y1, x0:x1] = True
    return m


def _write_rgb(path, objects, georeferenced=False):
    rgb = np.full((SIZE, SIZE, 3), 90, np.uint8)
    for k, (_, _, mask, _) in enumerate(objects):
        rgb[mask] = (40 + 13 * k % 200, 200 - 7 * k % 150, 120)
    if georeferenced:
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=SIZE,
            height=SIZE,
            count=3,
            dtype="uint8",
            crs=CRS,
            transform=from_origin(*ORIGIN, RES, RES),
        ) as dst:
            dst.write(rgb.transpose(2, 0, 1))
    else:
        Image.fromarray(rgb).save(path)


def _to_crs(x, y):
    return [ORIGIN[0] + x * RES, ORIGIN[1] - y * RES]


def _geojson(objects_rects, properties, crs=CRS):
    feats = []
    for (x0, y0, x1, y1), props in zip(objects_rects, properties):
        ring = [_to_crs(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
        feats.append(
            {"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [ring]}}
        )
    return {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": crs}},
        "features": feats,
    }


@pytest.fixture
def inputs(tmp_path):
    """Three rasters with their sources and the ground truth per object: (category, attribute, mask in the
    raster, whether it extends beyond the raster)."""
    rng = np.random.default_rng(7)
    truth = {}
    # buildings: GeoJSON polygons in the raster's CRS, roof colour as attribute
    rects = _rects(rng, 14, 10, 34)
    roofs = [("red", "grey")[k % 2] if k % 5 else None for k in range(len(rects))]
    truth["town"] = [("building", roof, _mask(r), max(r[2:]) > SIZE) for r, roof in zip(rects, roofs)]
    _write_rgb(tmp_path / "town.tif", truth["town"], georeferenced=True)
    props = [{"kind": "building", **({"roof": r} if r else {})} for r in roofs]
    (tmp_path / "town.geojson").write_text(json.dumps(_geojson(rects, props)))
    # trees: CSV boxes in pixels, Dead / Alive in a column
    rects = _rects(rng, 18, 8, 24)
    states = [("Dead", "Alive")[k % 3 == 0] for k in range(len(rects))]
    words = {"Dead": "dead", "Alive": "living"}
    truth["forest"] = [
        ("tree", words[s], _mask(r), False) for r, s in zip(rects, states)
    ]  # boxes end at the edge
    _write_rgb(tmp_path / "forest.png", truth["forest"])
    rows = ["image_path,xmin,ymin,xmax,ymax,label,state", "other.png,1,1,5,5,tree,Dead"]
    rows += [
        f"forest.png,{x0},{y0},{min(x1, SIZE)},{min(y1, SIZE)},Tree,{s}"
        for (x0, y0, x1, y1), s in zip(rects, states)
    ]
    (tmp_path / "forest.csv").write_text("\n".join(rows) + "\n")
    # pools: COCO RLE discs
    yy, xx = np.mgrid[:SIZE, :SIZE]
    discs = []
    for x0, y0, x1, y1 in _rects(rng, 10, 10, 30):
        r = min(x1 - x0, y1 - y0) / 2
        discs.append((xx + 0.5 - (x0 + r)) ** 2 + (yy + 0.5 - (y0 + r)) ** 2 <= r * r)
    truth["pools"] = [("pool", None, d, False) for d in discs]
    _write_rgb(tmp_path / "pools.png", truth["pools"])
    anns = []
    for k, d in enumerate(discs):
        rle = mask_utils.encode(np.asfortranarray(d.astype(np.uint8)))
        anns.append(
            {
                "id": k,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": {"size": [SIZE, SIZE], "counts": rle["counts"].decode()},
            }
        )
    coco = {
        "images": [{"id": 1, "file_name": "x/pools.png", "height": SIZE, "width": SIZE}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "Pool"}],
    }
    (tmp_path / "pools.json").write_text(json.dumps(coco))
    sources = [
        Source(
            str(tmp_path / "town.tif"),
            str(tmp_path / "town.geojson"),
            category_field="kind",
            attribute_field="roof",
        ),
        Source(
            str(tmp_path / "forest.png"),
            str(tmp_path / "forest.csv"),
            attribute_field="state",
            attribute_words=words,
        ),
        Source(str(tmp_path / "pools.png"), str(tmp_path / "pools.json")),
    ]
    return sources, truth


# --- an independent reading of the expressions: the plain meaning on the visible objects of the crop ---
CELLS = {name: (r, c) for r, row in enumerate(POSITION_NAMES) for c, name in enumerate(row)}
# word -> (axis: 0 for x, 1 for y; step: -1 towards smaller coordinates)
SIDES = {"left of": (0, -1), "west of": (0, -1), "right of": (0, 1), "east of": (0, 1),
         "above": (1, -1), "north of": (1, -1), "below": (1, 1), "south of": (1, 1)}
EXTREMES = {"leftmost": (0, -1), "westernmost": (0, -1), "rightmost": (0, 1), "easternmost": (0, 1),
            "topmost": (1, -1), "northernmost": (1, -1), "bottommost": (1, 1), "southernmost": (1, 1)}
NOUN = r"(building|tree|pool)"


def _describe(objs):
    out = []
    for category, attribute, mask, whole in objs:
        ys, xs = np.nonzero(mask)
        out.append(
            {
                "category": category,
                "attribute": attribute,
                "area": len(xs),
                "whole": whole,
                "c": (xs.mean() + 0.5, ys.mean() + 0.5),
                "box": (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1),
            }
        )
    return out


def _resolve(text, objs, side):
    """Indices of the objects the text describes (plain reading)."""
    m = re.fullmatch(
        rf"the {NOUN} (left of|right of|above|below|west of|east of|north of|south of|closest to) "
        rf"(the .+)",
        text,
    )
    if m:
        anchors = _resolve(m.group(3), objs, side)
        assert len(anchors) == 1, f"anchor of {text!r} is not one object: {anchors}"
        a = objs[anchors[0]]
        assert a["whole"], f"the anchor of {text!r} is cut by the crop"
        same = [i for i, o in enumerate(objs) if o["category"] == m.group(1) and i != anchors[0]]
        if m.group(2) == "closest to":
            d = {i: np.hypot(*np.subtract(objs[i]["c"], a["c"])) for i in same}
            return [i for i in same if d[i] == min(d.values())]
        axis, step = SIDES[m.group(2)]
        other = 1 - axis

        def level(o):  # the boxes share rows (left/right) or columns (above/below)
            return min(o["box"][other + 2], a["box"][other + 2]) > max(o["box"][other], a["box"][other])

        return [i for i in same if step * (objs[i]["c"][axis] - a["c"][axis]) > 0 and level(objs[i])]
    m = re.fullmatch(rf"the (?:(.+) )?{NOUN}(?: (?:at the (.+)|in the (center)))?", text)
    assert m, f"unparsed expression {text!r}"
    word, category, cell = m.group(1), m.group(2), m.group(3) or m.group(4)
    same = [i for i, o in enumerate(objs) if o["category"] == category]
    if cell:
        r, c = CELLS[cell]
        return [
            i for i in same if (int(3 * objs[i]["c"][1] / side), int(3 * objs[i]["c"][0] / side)) == (r, c)
        ]
    if word is None:
        return same
    area = {i: objs[i]["area"] for i in same}
    if word in ("large", "small", "largest", "smallest"):
        assert len(same) == 2 if word in ("large", "small") else len(same) >= 3, (
            f"{text!r}: {len(same)} objects"
        )
        pick = max if word.startswith("large") else min
        return [i for i in same if area[i] == pick(area.values())]
    if word in EXTREMES:
        axis, step = EXTREMES[word]
        best = max(step * objs[i]["c"][axis] for i in same)
        return [i for i in same if step * objs[i]["c"][axis] == best]
    return [i for i in same if objs[i]["attribute"] == word]


def _check_dataset(out, truth):
    kinds, templates, checked = set(), set(), 0
    for split in ("train", "val", "test"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            x0, y0, x1, y1 = rec["window"]
            objects = truth[rec["source"]]
            index = [k for k, o in enumerate(objects) if o[2][y0:y1, x0:x1].any()]  # every visible object
            whole = [
                k
                for k in index
                if objects[k][2][y0:y1, x0:x1].sum() == objects[k][2].sum() and not objects[k][3]
            ]
            objs = [(objects[k][0], objects[k][1], objects[k][2][y0:y1, x0:x1], k in whole) for k in index]
            target = rec["object_id"]
            found = [index[i] for i in _resolve(rec["expression"], _describe(objs), x1 - x0)]
            assert found == [target], f"{rec['expression']!r} in {rec['image']} selects {found}, not {target}"
            assert target in whole, f"{rec['expression']!r}: its target is cut by the crop"
            written = np.asarray(Image.open(out / rec["mask"])) > 0
            assert (written == objects[target][2][y0:y1, x0:x1]).all()
            kinds.add(rec["mask_kind"])
            templates.add(rec["template"])
            checked += 1
    return kinds, templates, checked


def test_every_expression_selects_exactly_its_target(inputs, tmp_path):
    sources, truth = inputs
    truth = {os.path.splitext(os.path.basename(s.raster))[0]: truth[k] for s, k in zip(sources, truth)}
    info = make_referring(sources, str(tmp_path / "out"), PARAMS)
    kinds, templates, checked = _check_dataset(tmp_path / "out", truth)
    assert checked == sum(s["expressions"] for s in info["splits"].values()) > 60
    assert kinds == {"polygon", "box", "mask"}
    assert {"attribute", "position", "superlative", "relative"} <= templates
    assert all(info["splits"][s]["expressions"] > 0 for s in ("train", "val", "test"))
    texts = (tmp_path / "out" / "train.jsonl").read_text()
    assert " south of " in texts or " north of " in texts or "ernmost" in texts  # the GeoTIFF is north-up
    assert "westernmost" not in "".join(
        json.loads(t)["expression"] for t in texts.splitlines() if json.loads(t)["source"] != "town"
    )
    # objects cut by the raster's edge are never targets
    edge = {k for k, o in enumerate(truth["town"]) if o[3]}
    assert edge and not edge & {json.loads(t)["object_id"] for t in texts.splitlines() if "town" in t}
    # ready for register_rrsis_dataset: the loader reads it, masks decode at the crop's size
    records = load_rrsis_jsonl(str(tmp_path / "out" / "test.jsonl"))
    assert {"category", "template", "mask_kind", "attribute", "window"} <= set(records[0])
    assert load_gt_mask(records[0]).shape == (80, 80) and (records[0]["height"], records[0]["width"]) == (
        80,
        80,
    )
    assert info["sources"][1]["objects"] == 18 and info["sources"][2]["objects"] == 10


def test_split_is_geographic_and_deterministic(inputs, tmp_path):
    sources, _ = inputs
    make_referring(sources, str(tmp_path / "a"), PARAMS)
    make_referring(sources, str(tmp_path / "b"), PARAMS)
    files = sorted(
        os.path.relpath(os.path.join(d, f), tmp_path / "a")
        for d, _, fs in os.walk(tmp_path / "a")
        for f in fs
    )
    assert len(files) > 50
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    windows = {}
    for split in ("train", "val", "test"):
        for line in (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            windows.setdefault(rec["source"], {}).setdefault(split, set()).add(tuple(rec["window"]))
    for by_split in windows.values():
        cover = {s: np.zeros((SIZE, SIZE), bool) for s in by_split}
        for split, wins in by_split.items():
            for x0, y0, x1, y1 in wins:
                cover[split][y0:y1, x0:x1] = True
        splits = sorted(cover)
        for i, s in enumerate(splits):
            for t in splits[i + 1 :]:
                assert not (cover[s] & cover[t]).any(), f"{s} and {t} windows share pixels"
    overlapping = any(
        len(w) > 1
        and any(a != b and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for a in w for b in w)
        for s in windows.values()
        for w in s.values()
    )
    assert overlapping  # windows of one split may overlap (stride < crop size)
    make_referring(
        sources, str(tmp_path / "c"), ReferringParams(layout=LAYOUT, expressions_per_crop=4, seed=4)
    )
    assert (tmp_path / "c" / "test.jsonl").read_text() != (tmp_path / "a" / "test.jsonl").read_text()
    with pytest.raises(ReferringInputError, match="already holds a dataset"):
        make_referring(sources, str(tmp_path / "a"), PARAMS)


def test_voc_and_pixel_geojson_read_like_csv_and_crs(inputs, tmp_path):
    sources, _ = inputs
    rows = (tmp_path / "forest.csv").read_text().splitlines()[2:]
    cells = [r.split(",") for r in rows]
    objs = "".join(
        f"<object><name>{c[6]}</name><bndbox><xmin>{c[1]}</xmin><ymin>{c[2]}</ymin>"
        f"<xmax>{c[3]}</xmax><ymax>{c[4]}</ymax></bndbox></object>"
        for c in cells
    )
    (tmp_path / "forest.xml").write_text(
        f"<annotation><size><width>{SIZE}</width><height>{SIZE}</height></size>{objs}</annotation>"
    )
    geo = json.loads((tmp_path / "town.geojson").read_text())
    for f in geo["features"]:
        f["geometry"]["coordinates"] = [
            [[(x - ORIGIN[0]) / RES, (ORIGIN[1] - y) / RES] for x, y in f["geometry"]["coordinates"][0]]
        ]
    del geo["crs"]
    (tmp_path / "town_px.geojson").write_text(json.dumps(geo))
    voc = Source(
        sources[1].raster,
        str(tmp_path / "forest.xml"),
        category="tree",
        attribute_field="name",
        attribute_words=sources[1].attribute_words,
    )
    px = Source(
        sources[0].raster,
        str(tmp_path / "town_px.geojson"),
        category_field="kind",
        attribute_field="roof",
        pixel_coords=True,
    )
    make_referring([sources[0], sources[1]], str(tmp_path / "a"), PARAMS)
    make_referring([px, voc], str(tmp_path / "b"), PARAMS)
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_text() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_text()


def _run(tmp_path, source, **kw):
    return make_referring([source], str(tmp_path / "out"), PARAMS, overwrite=True, **kw)


def test_bad_inputs_name_the_file_and_feature(inputs, tmp_path):
    sources, _ = inputs
    town = json.loads((tmp_path / "town.geojson").read_text())

    def write(name, data):
        (tmp_path / name).write_text(json.dumps(data))
        return Source(sources[0].raster, str(tmp_path / name), category_field="kind")

    # outside the raster, empty geometry: counted and reported drops
    far = json.loads(json.dumps(town["features"][0]))
    far["geometry"]["coordinates"] = [[[x + 5000, y] for x, y in far["geometry"]["coordinates"][0]]]
    empty = {"type": "Feature", "properties": {"kind": "building"}, "geometry": None}
    info = _run(tmp_path, write("drops.geojson", dict(town, features=town["features"] + [far, empty])))
    assert info["sources"][0]["dropped"] == {
        "empty geometry": 1,
        "outside the raster or covering no pixel centre": 1,
    }
    assert info["sources"][0]["objects"] == len(town["features"])
    with pytest.raises(ReferringInputError, match=r"all_far.geojson: none of its 1 features lies on"):
        _run(tmp_path, write("all_far.geojson", dict(town, features=[far])))
    # a CRS mismatch
    with pytest.raises(
        ReferringInputError, match=r"wgs84.geojson: CRS mismatch.*EPSG:4326.*EPSG:32633.*ogr2ogr"
    ):
        _run(
            tmp_path,
            write("wgs84.geojson", dict(town, crs={"type": "name", "properties": {"name": "EPSG:4326"}})),
        )
    # an invalid polygon (a bow tie)
    bow = json.loads(json.dumps(town["features"][1]))
    (a, b, c, d, _) = bow["geometry"]["coordinates"][0]
    bow["geometry"]["coordinates"] = [[a, c, b, d, a]]
    with pytest.raises(
        ReferringInputError, match=r"bow.geojson feature 2: invalid polygon \(Self-intersection"
    ):
        _run(tmp_path, write("bow.geojson", dict(town, features=town["features"][:2] + [bow])))
    # a category field that does not exist
    with pytest.raises(
        ReferringInputError, match=r"town.geojson feature 0: no field 'type' for the category.*kind"
    ):
        _run(tmp_path, Source(sources[0].raster, sources[0].annotations, category_field="type"))
    with pytest.raises(ReferringInputError, match=r"no category; .*--category"):
        _run(tmp_path, Source(sources[0].raster, sources[0].annotations))
    with pytest.raises(ReferringInputError, match=r"no feature has the attribute field 'colour'"):
        _run(
            tmp_path,
            Source(sources[0].raster, sources[0].annotations, category="house", attribute_field="colour"),
        )
    # boxes: an inverted one, missing columns; COCO: an RLE of another size, another image
    (tmp_path / "bad.csv").write_text("xmin,ymin,xmax,ymax,label\n1,1,9,9,tree\n20,5,10,15,tree\n")
    with pytest.raises(ReferringInputError, match=r"bad.csv row 3: empty or inverted box"):
        _run(tmp_path, Source(sources[1].raster, str(tmp_path / "bad.csv")))
    (tmp_path / "cols.csv").write_text("x,y,label\n1,1,tree\n")
    with pytest.raises(ReferringInputError, match=r"cols.csv: CSV boxes need columns"):
        _run(tmp_path, Source(sources[1].raster, str(tmp_path / "cols.csv")))
    coco = json.loads((tmp_path / "pools.json").read_text())
    coco["annotations"][0]["segmentation"]["size"] = [10, 10]
    (tmp_path / "rle.json").write_text(json.dumps(coco))
    with pytest.raises(ReferringInputError, match=r"rle.json annotation 0: an RLE needs"):
        _run(tmp_path, Source(sources[2].raster, str(tmp_path / "rle.json")))
    with pytest.raises(ReferringInputError, match=r"0 images named 'forest.png'"):
        _run(tmp_path, Source(sources[1].raster, sources[2].annotations))
    with pytest.raises(ReferringInputError, match=r"no CRS"):
        _run(tmp_path, Source(sources[1].raster, sources[0].annotations, category="x"))


def test_overlapping_rasters_are_refused(inputs, tmp_path):
    sources, _ = inputs
    twin = Source(sources[0].raster, sources[0].annotations, category_field="kind", name="twin")
    with pytest.raises(ReferringInputError, match="overlap on the ground"):
        make_referring([sources[0], twin], str(tmp_path / "out"), PARAMS)


def test_cli(inputs, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "--input",
        str(tmp_path / "forest.png"),
        str(tmp_path / "forest.csv"),
        "--attribute-field",
        "state",
        "--attribute-word",
        "Dead=dead",
        "--attribute-word",
        "Alive=living",
        "--crop-size",
        "80",
        "--stride",
        "40",
        "--block-size",
        "120",
        "--expressions-per-crop",
        "4",
        "--seed",
        "3",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "forest: 18 objects" in printed and "test:" in printed
    inputs_sources, _ = inputs
    make_referring([inputs_sources[1]], str(tmp_path / "api"), PARAMS)
    assert (out / "train.jsonl").read_text() == (tmp_path / "api" / "train.jsonl").read_text()
    with pytest.raises(SystemExit) as e:
        main(argv[:3] + ["--category-field", "kind", "--output-dir", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "forest.csv row 3: no field 'kind'" in capsys.readouterr().err


def _box_referent(x0, y0, x1, y1, category="tree", attribute="living", full_area=None, side=100):
    mask = np.zeros((side, side), bool)
    mask[max(0, y0) : y1, max(0, x0) : x1] = True
    area = (x1 - x0) * (y1 - y0)
    return BoxReferent.from_mask(
        mask,
        category,
        {"attribute": attribute},
        full_area or area,
        whole=min(x0, y0) >= 0 and full_area is None,
    )


def test_grammar_keeps_borderline_expressions_out():
    """The target must surely fit and every other object surely not: margins on positions, sizes, distances,
    and cut objects judged by their full size."""
    g, selects = REFERRING_GRAMMAR, REFERRING_GRAMMAR.selects
    target = _box_referent(5, 5, 15, 15)  # centre (10, 10): top left
    spec = {"category": "tree", "template": "position", "position": "top left"}
    far = _box_referent(85, 85, 95, 95)
    assert selects(spec, target, [target, far])
    near_border = _box_referent(5, 31, 15, 41)  # centre y 36 > 33.3: in the middle row, but within the margin
    assert not selects(spec, target, [target, near_border, far])
    # "largest": a cut object counts with its full size
    big = _box_referent(40, 40, 60, 60)
    cut = _box_referent(-10, 70, 8, 88, full_area=18 * 28)
    largest = {"category": "tree", "template": "superlative", "extreme": "largest"}
    assert selects(largest, big, [big, target, far])
    assert not selects(largest, big, [big, target, cut])
    assert not selects(largest, cut, [big, target, cut])  # cut objects are never targets
    # a relation: one object level with the anchor on that side, another one merely roughly level
    anchor = _box_referent(50, 50, 60, 60, attribute="dead")
    left = _box_referent(30, 50, 40, 60)
    spec = {
        "category": "tree",
        "template": "relative",
        "relation": "left of",
        "anchor": {"category": "tree", "template": "attribute", "attribute": "dead"},
    }
    assert selects(spec, left, [anchor, left, far]) and g.render(spec) == "the tree left of the dead tree"
    unknown = _box_referent(
        80, 80, 90, 90, attribute=None
    )  # might be dead: the anchor is no longer surely one
    assert not selects(spec, left, [anchor, left, far, unknown])
    assert not selects(spec, left, [anchor, left, far, _box_referent(10, 63, 20, 73)])
    # "closest to" needs a margin in distance
    closest = dict(spec, relation="closest to")
    assert selects(closest, left, [anchor, left, far])
    assert not selects(closest, left, [anchor, left, _box_referent(67, 50, 77, 60)])
