"""crobim-serve's page in a real browser: Debian's headless Chromium, driven by Selenium through chromedriver.

The server runs as its own process (``python -m crobim_d2.serve.cli``) on 127.0.0.1 with a tiny random model;
crobim-predict runs in the test on the same inputs for the reference. Chromium and chromedriver come from apt
(tools/install_browser.sh, also run by ``make test``); where they cannot be installed the test fails.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from _geo_helpers import read_band, tiny_checkpoint, write_raster
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from crobim_d2.geo import cli
from crobim_d2.serve.page import SPACENET_EXPRESSION, SPACENET_SAMPLE

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# What works on these machines as root, with nothing reaching the network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
]
TIMEOUT_S = 120
MAX_UPLOAD_MB = 1


@pytest.fixture(scope="module")
def chromium():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        done = subprocess.run(
            ["bash", str(REPO / "tools" / "install_browser.sh")], check=False, capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(f"Chromium is needed for this test and could not be installed: {done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """crobim-predict's / crobim-serve's model arguments, and the config overrides of the tiny model."""
    model_args, opts = tiny_checkpoint(tmp_path_factory.mktemp("model"))
    return model_args, opts


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A datasets root holding one example: a one-band uint16 GeoTIFF where realrs keeps SpaceNet's."""
    root = tmp_path_factory.mktemp("datasets")
    pan = np.random.default_rng(4).integers(100, 3000, (72, 80), dtype=np.uint16)
    pan[20:40, 10:50] = 3500
    (root / SPACENET_SAMPLE).parent.mkdir(parents=True)
    write_raster(root / SPACENET_SAMPLE, pan)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(chromium, model, datasets, tmp_path_factory):
    """The URL of a running crobim-serve; on teardown it is stopped and its temporary folder must be gone."""
    model_args, opts = model
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    argv = [sys.executable, "-m", "crobim_d2.serve.cli", *model_args, "--port", str(port)]
    argv += ["--max-upload-mb", str(MAX_UPLOAD_MB), *opts]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"crobim-serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail(
                    f"crobim-serve did not answer within {TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.5)
    work_dir = next(
        line.split(" in ", 1)[1].split(" (")[0]
        for line in log_path.read_text().splitlines()
        if line.startswith("crobim-serve: uploads and results in ")
    )
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert not os.path.exists(work_dir), "crobim-serve left its temporary folder behind"


@pytest.fixture
def browser(server, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get(server)
    page = Page(driver, downloads)
    page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#scene input[type=file]"))
    yield page
    driver.quit()


class Page:
    def __init__(self, driver, downloads: Path):
        self.driver, self.downloads = driver, downloads

    def wait(self, condition):
        return WebDriverWait(self.driver, TIMEOUT_S).until(condition)

    def find(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def upload(self, path):
        for clear in self.find("#scene button[aria-label='Clear']"):
            clear.click()
        self.wait(lambda d: self.find("#scene input[type=file]"))[0].send_keys(str(path))
        self.wait(lambda d: Path(path).stem in self.find("#scene")[0].text)

    def segment(self, expression, **fields) -> str:
        """Type the expression (and ``fields``: elem_id -> text, in the options); submit; the status."""
        if fields and not self.find("#bands textarea"):  # the options are rendered when opened
            self.find("#options button.label-wrap")[0].click()
        for elem_id, text in {"expression": expression, **fields}.items():
            box = self.wait(lambda d, elem_id=elem_id: self.find(f"#{elem_id} textarea"))[0]
            box.clear()
            box.send_keys(text)
        return self.submit()

    def submit(self) -> str:
        before = self.status()
        self.find("#submit")[0].click()
        return self.wait(lambda d: (text := self.status()) != before and text)

    def status(self) -> str:
        return " ".join(p.text for p in self.find("#status p"))

    def error(self) -> str:
        return " ".join(p.text for p in self.find("#status .crobim-error"))

    def download(self, elem_id) -> Path:
        link = self.wait(lambda d: self.find(f"#{elem_id} a.download-link"))[0]
        name = link.get_attribute("download")
        link.click()
        target = self.downloads / name
        self.wait(lambda d: target.is_file() and not list(self.downloads.glob("*.crdownload")))
        return target

    def shown(self, elem_id) -> np.ndarray:
        """The image a result box shows, as the browser fetched it."""
        src = self.wait(lambda d: self.find(f"#{elem_id} img"))[0].get_attribute("src")
        with urllib.request.urlopen(src, timeout=30) as response:
            data = np.frombuffer(response.read(), np.uint8)
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def crobim_predict(model, image, expression, out, *flags) -> dict:
    model_args, opts = model
    argv = [
        *model_args,
        "--input",
        str(image),
        "--expression",
        expression,
        "--output-dir",
        str(out),
        "--quiet",
    ]
    cli.main([*argv, *flags, *opts])
    return json.loads((out / "predictions.jsonl").read_text())


def scene_png(path):
    """Gray ground with a red and a blue block."""
    image = np.full((96, 128, 3), 120, np.uint8)
    image[20:50, 30:70] = (200, 40, 40)
    image[60:90, 80:120] = (40, 40, 200)
    Image.fromarray(image).save(path)
    return path


def test_png_upload_shows_and_downloads_crobim_predicts_result(browser, model, tmp_path):
    scene = scene_png(tmp_path / "blocks.png")
    expression = "the red building on the left"
    reference = crobim_predict(model, scene, expression, tmp_path / "reference")
    want_mask = cv2.imread(reference["files"]["mask_png"], cv2.IMREAD_UNCHANGED)
    assert 0 < (want_mask > 0).sum() < want_mask.size  # a mask that can be told apart from another

    browser.upload(scene)
    status = browser.segment(expression)
    assert f"score {reference['score']:.3f}" in status and not browser.error()
    mask = browser.download("mask-file")
    assert mask.name == "blocks_the-red-building-on-the-left_mask.png"
    np.testing.assert_array_equal(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED), want_mask)
    overlay = cv2.imread(reference["files"]["overlay_png"], cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(browser.shown("overlay"), overlay)
    assert browser.shown("heatmap").shape == overlay.shape
    polygons = json.loads(browser.download("polygons-file").read_text())
    want = json.loads(Path(reference["files"]["geojson"]).read_text())
    assert [f["geometry"] for f in polygons["features"]] == [f["geometry"] for f in want["features"]]
    # Nothing comes from the internet (fonts, scripts): the server may have none.
    resources = browser.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(r.startswith(browser.driver.current_url) for r in resources), resources
    browser.driver.save_screenshot(str(tmp_path / "serve_screenshot.png"))
    assert (tmp_path / "serve_screenshot.png").stat().st_size > 0


def assert_same_geotiff(a, b):
    want = read_band(b)
    assert 0 < want.sum() < want.size
    np.testing.assert_array_equal(read_band(a), want)
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.crs is not None and (x.crs, x.transform) == (y.crs, y.transform)


def test_geotiff_example_and_bands_match_crobim_predict(browser, model, datasets, tmp_path):
    rows = browser.wait(lambda d: browser.find("table tbody tr"))
    assert [r.text.split("\n") for r in rows] == [["sample_geotiff.tif", SPACENET_EXPRESSION]]
    rows[0].click()
    browser.wait(lambda d: "sample_geotiff" in browser.find("#scene")[0].text)
    assert browser.find("#expression textarea")[0].get_attribute("value") == SPACENET_EXPRESSION
    assert "score" in browser.submit()
    reference = crobim_predict(
        model, datasets / SPACENET_SAMPLE, SPACENET_EXPRESSION, tmp_path / "ref_example"
    )
    assert_same_geotiff(browser.download("mask-file"), reference["files"]["mask_tif"])

    bands = np.random.default_rng(5).integers(0, 5000, (4, 48, 64), dtype=np.uint16)
    bands[3, 10:30, 20:50] = 5000
    scene = write_raster(tmp_path / "multiband.tif", bands)
    browser.upload(scene)
    browser.segment("the bright field", bands="4,3,2", percentiles="5,95")
    flags = ["--bands", "4,3,2", "--stretch-percentiles", "5,95"]
    reference = crobim_predict(model, scene, "the bright field", tmp_path / "ref_bands", *flags)
    assert_same_geotiff(browser.download("mask-file"), reference["files"]["mask_tif"])


def test_bad_inputs_show_crobim_predicts_message(browser, model, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[: len(data) // 2])  # the header is intact: decoding fails
    cli_error = crobim_predict(model, broken, "the pond", tmp_path / "reference")["error"]

    browser.upload(broken)
    browser.segment("the pond")
    assert browser.error() == cli_error.replace(str(broken), "broken.jpg")
    assert "Premature end of JPEG file" in browser.error()
    assert not browser.find("#mask-file a.download-link") and not browser.find("#overlay img")

    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    browser.upload(text)
    browser.segment("the pond")
    assert browser.error().startswith("Cannot read notes.tif (not a PNG, JPEG or TIFF file by its content)")

    browser.upload(scene_png(tmp_path / "blocks.png"))
    browser.segment(" ")
    assert browser.error().startswith("Empty expression; describe the object to segment")

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(int(MAX_UPLOAD_MB * 2**20)))
    browser.find("#scene button[aria-label='Clear']")[0].click()
    browser.wait(lambda d: browser.find("#scene input[type=file]"))[0].send_keys(str(big))
    browser.wait(lambda d: "exceed the maximum allowed size" in d.find_element(By.TAG_NAME, "body").text)
