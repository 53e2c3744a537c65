"""realrs: a small RRSIS benchmark on real aerial imagery, built with ``make_referring`` from annotated
samples that two Python packages ship (nothing of it is committed here).

- SpaceNet Atlanta (``solaris==0.4.0``, Apache-2.0; imagery CC BY-SA 4.0): ``sample_geotiff.tif``, 900x900,
  one uint16 panchromatic band at 0.5 m (stretched to 8-bit gray RGB as crobim-predict does), with 43
  building polygons in ``geotiff_labels.geojson`` (EPSG:32616).
- NEON (``deepforest==2.1.0``, MIT; NEON data public): ``OSBS_029`` (400x400 RGB at 0.1 m, 61 tree-crown boxes
  in CSV) and ``SOAP_061`` (400x400, 37 boxes labelled Alive / Dead in Pascal VOC). ``OSBS_029.png`` is used
  rather than the GeoTIFF: same pixels, without the GeoTIFF's nodata value 255, which marks saturated pixels.

The wheels are fetched from the package index (``$PIP_INDEX_URL``, default PyPI) without dependencies, checked
against pinned SHA-256 digests, and cached. solaris 0.4.0 has a malformed dependency string that pip >= 24.1
refuses even for ``pip download``, so the wheel file is read from the index's simple page instead.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import urllib.parse
import urllib.request
import zipfile

from .source import CropLayout, Source
from .store import build_once, may_build, read_info, refuse_foreign

__all__ = ["REALRS_CATEGORIES", "REALRS_VERSION", "build_realrs", "ensure_realrs", "fetch_samples"]

REALRS_VERSION = 1
BUILD_ENV = "CROBIM_BUILD_REALRS"
REALRS_CATEGORIES = ("building", "tree")
WHEELS = {  # name: (version, sha256, members used)
    "solaris": (
        "0.4.0",
        "09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df",
        ("solaris/data/sample_geotiff.tif", "solaris/data/geotiff_labels.geojson"),
    ),
    "deepforest": (
        "2.1.0",
        "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54",
        tuple(
            f"deepforest/data/{f}" for f in ("OSBS_029.png", "OSBS_029.csv", "SOAP_061.png", "SOAP_061.xml")
        ),
    ),
}
# Buildings (0.5 m) in 256 px crops from 3x3 blocks of 300 px; trees (0.1 m) in 128 px crops from 2x2 blocks
# of 200 px; crops of a block overlap so the few objects appear at several positions.
BUILDING_LAYOUT = CropLayout(crop_size=256, stride=22, block_size=300)
TREE_LAYOUT = CropLayout(crop_size=128, stride=36, block_size=200)
# ReferringParams(**PARAMS): kept as keywords so that importing crobim_d2 (which registers realrs_*) does not
# import the maker and, with it, rasterio, shapely and GDAL, which only a build needs.
PARAMS = {"expressions_per_crop": 4, "seed": 0}

logger = logging.getLogger(__name__)


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _wheel_url(name: str, filename: str) -> str:
    """The file's URL from the index's simple page (JSON, PEP 691, or HTML, PEP 503)."""
    page = f"{_index_url()}/{name}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode("utf-8")
        if "json" in response.headers.get("Content-Type", ""):
            urls = [f["url"] for f in json.loads(body)["files"] if f["filename"] == filename]
        else:
            urls = re.findall(rf'href="([^"#]*{re.escape(filename)})[^"]*"', body)
    if not urls:
        raise FileNotFoundError(f"{filename} is not listed on {page}")
    return urllib.parse.urljoin(page, urls[0])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(name: str, cache_dir: str) -> str:
    """Path of the pinned wheel of ``name`` in ``cache_dir``, downloaded (without dependencies) if absent."""
    version, sha256, _ = WHEELS[name]
    filename = f"{name}-{version}-py3-none-any.whl"
    path = os.path.join(cache_dir, filename)
    if os.path.isfile(path) and _sha256(path) == sha256:
        return path
    os.makedirs(cache_dir, exist_ok=True)
    part = f"{path}.part-{os.getpid()}"
    try:
        with (
            urllib.request.urlopen(_wheel_url(name, filename), timeout=300) as response,
            open(part, "wb") as f,
        ):
            shutil.copyfileobj(response, f)
    except OSError as e:  # urllib.error.URLError is one
        raise RuntimeError(
            f"Could not fetch {filename} from {_index_url()}/{name}/ ({e}). realrs needs it once: check the "
            f"network or PIP_INDEX_URL, or put the file in {cache_dir} (e.g. `python3 -m pip download "
            f"--no-deps {name}=={version} -d {cache_dir}` with pip < 24.1)."
        ) from None
    if _sha256(part) != sha256:
        os.remove(part)
        raise RuntimeError(
            f"{filename} from {_index_url()} does not have the pinned SHA-256 {sha256}; not used."
        )
    os.replace(part, path)
    return path


def fetch_samples(cache_dir: str) -> str:
    """Fetch both wheels into ``cache_dir`` and unpack the sample files; returns the folder holding them."""
    out = os.path.join(cache_dir, "samples")
    for name, (_, _, members) in WHEELS.items():
        if all(os.path.isfile(os.path.join(out, m)) for m in members):
            continue
        with zipfile.ZipFile(fetch_wheel(name, cache_dir)) as wheel:
            for member in members:
                wheel.extract(member, out)
    return out


def realrs_sources(samples: str) -> list[Source]:
    solaris, neon = os.path.join(samples, "solaris", "data"), os.path.join(samples, "deepforest", "data")
    return [
        Source(os.path.join(solaris, "sample_geotiff.tif"), os.path.join(solaris, "geotiff_labels.geojson"),
               category="building", name="spacenet_atlanta", layout=BUILDING_LAYOUT),
        Source(os.path.join(neon, "OSBS_029.png"), os.path.join(neon, "OSBS_029.csv"),
               image_name="OSBS_029.tif", name="neon_osbs_029", layout=TREE_LAYOUT),
        Source(os.path.join(neon, "SOAP_061.png"), os.path.join(neon, "SOAP_061.xml"), category="tree",
               attribute_field="name", attribute_words={"Alive": "living", "Dead": "dead"},
               name="neon_soap_061", layout=TREE_LAYOUT),
    ]


def _current(info: dict) -> bool:
    return info.get("version") == REALRS_VERSION


def build_realrs(root: str, cache_dir: str | None = None, force: bool = True) -> dict:
    """Build ``<root>/realrs`` (replacing it when ``force``) atomically, under a file lock so that concurrent
    processes do not clash; the wheels are cached in ``cache_dir`` (default ``<root>/.realrs-cache``).
    Returns the content of ``info.json``."""

    def build(tmp: str) -> dict:
        from .make import ReferringParams, make_referring

        samples = fetch_samples(cache_dir or os.path.join(root, ".realrs-cache"))
        info = make_referring(realrs_sources(samples), tmp, ReferringParams(**PARAMS))
        for source in info["sources"]:  # name the files by their wheel, not by this machine's cache path
            for key in ("raster", "annotations"):
                member = os.path.relpath(source[key], samples)
                wheel = member.split(os.sep)[0]
                source[key] = f"{wheel}-{WHEELS[wheel][0]}.whl:{member}"
        return {"name": "realrs", "version": REALRS_VERSION, **info}

    return build_once(root, "realrs", _current, build, force)


def ensure_realrs(root: str, cache_dir: str | None = None, build: bool | None = None) -> str:
    """Return ``<root>/realrs``, building it if it was built by another version, or if it is absent and
    ``build`` (``None``: when ``root`` is the default ``./datasets`` or ``CROBIM_BUILD_REALRS=1``); an absent
    dataset that may not be built is a ``FileNotFoundError`` naming the path and how to build it."""
    path = os.path.join(root, "realrs")
    info = read_info(path)
    if _current(info):
        return path
    refuse_foreign(root, "realrs", info, "datasets/prepare_realrs.py")
    if not info and not (may_build(root, BUILD_ENV, "build realrs") if build is None else build):
        raise FileNotFoundError(
            f"realrs not found at {os.path.abspath(path)}. It is built on first use only under the default "
            f"root ./datasets; to build it here, run python datasets/prepare_realrs.py --root {root} or set "
            f"{BUILD_ENV}=1. If it is elsewhere, set DETECTRON2_DATASETS to that root."
        )
    logger.warning(f"Building realrs in {os.path.abspath(path)} (once; see datasets/README.md).")
    build_realrs(root, cache_dir, force=False)
    return path
