"""The demo page at / of each model server (services/demo.py, services/static/), driven in headless
Chromium as a person would use it, and the API docs at /docs.

The browser tests need Debian's `chromium` and `chromium-driver` (.ci/run installs them); without
them they skip, unless ROOST_REQUIRE_BROWSER=1 (CI), where they fail. With ROOST_SCREENSHOTS=DIR
the screenshots are also written to DIR/demo-<model>.png (README's pictures: docs/img).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tomllib
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from tests.conftest import BIRD_EXAMPLES, ROOT, SHARED

STATIC = ROOT / "services" / "static"
CAMVID_FRAME = SHARED / "fastai_samples" / "camvid_tiny" / "images" / "0001TP_006750.png"
MODELS = ("bird", "segment", "tabular", "collab")
WAIT_S = 60


# -- fast: the files and the headers ---------------------------------------------------------------


def test_static_files_reference_nothing_outside_and_hold_no_inline_code():
    texts = {p.name: p.read_text() for p in STATIC.iterdir() if p.suffix in (".html", ".js", ".css")}
    assert {f"{m}.html" for m in MODELS} | {"roost.js", "roost.css", "docs.html"} <= set(texts)
    for name, text in texts.items():
        assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text, re.I), f"{name} names an outside URL"
        if name.endswith(".html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{name} has an inline script"
            assert not re.search(r"<style|\sstyle=|\son[a-z]+=", text, re.I), f"{name} has inline style or handlers"


def test_package_data_ships_the_static_files():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["services"]
    shipped = {p for pattern in patterns for p in (ROOT / "services").glob(pattern)}
    assert set(STATIC.iterdir()) <= shipped


def test_every_demo_answer_carries_a_self_only_csp():
    from starlette.testclient import TestClient

    from services.demo import create_app

    service = SimpleNamespace(inner=SimpleNamespace(model_class=SimpleNamespace(name="bird")))
    with TestClient(create_app(service)) as client:
        for path in ("/", "/docs", "/demo/static/roost.js", "/demo/static/roost.css"):
            r = client.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "http" not in csp and "unsafe" not in csp, csp
            assert r.headers.get_list("content-security-policy") == [csp]
            assert ("img-src 'self' data:" in csp) == (path == "/docs"), csp  # Swagger UI's icons
            assert r.headers["x-content-type-options"] == "nosniff"


def test_the_openapi_document_lists_every_oip_route():
    from services.oip.rest import create_app
    from services.openapi import oip_paths

    app = create_app(lambda: None)
    paths = oip_paths(app)
    for route in app.routes:
        for method in route.methods - {"HEAD"}:
            assert method.lower() in paths[route.path], (route.path, method)
    assert paths["/v2/models/{name}/infer"]["post"]["requestBody"]["required"]


# -- slow: the real servers in a real browser ----------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("ROOST_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server_of, tmp_path):
    """page(model) -> a Page on that model's server, loaded and ready."""
    pages = []

    def open_page(model: str) -> "Page":
        p = Page(browser, server_of(model), model, tmp_path)
        p.load("/")
        pages.append(p)
        return p

    yield open_page
    for p in pages:
        p.check_nothing_outside()


class Page:
    def __init__(self, driver, server, model: str, tmp: Path):
        self.driver, self.server, self.model, self.tmp = driver, server, model, tmp

    def load(self, path: str) -> None:
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.driver.get_log("browser")  # start with an empty console
        self.driver.get(self.server.url + path)
        if path == "/":
            self.wait(lambda d: self.text("#version") not in ("", "…"))

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def shown(self, css: str) -> bool:
        return self.find(css).is_displayed()

    def wait(self, condition, timeout: float = WAIT_S):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(condition)

    def wait_shown(self, css: str):
        self.wait(lambda d: self.shown(css))

    def api(self, route: str, **kwargs) -> httpx.Response:
        return httpx.post(self.server.url + route, timeout=30, **kwargs)

    def screenshot(self, name: str | None = None, width: int = 1100, mobile: bool = False, readme: bool = True) -> Path:
        """A full-page PNG into the test's tmp dir (and, for README's, into $ROOST_SCREENSHOTS),
        checked not blank."""
        content_height = "return Math.ceil(document.body.getBoundingClientRect().bottom)"
        self.driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": mobile, "maxTouchPoints": 5})
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": 600, "deviceScaleFactor": 1, "mobile": mobile})
        height = self.driver.execute_script(content_height)
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        self.driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        height = self.driver.execute_script(content_height)
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        })
        data = base64.b64decode(shot["data"])
        self.driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        assert_not_blank(data)
        name = name or f"demo-{self.model}"
        path = self.tmp / f"{name}.png"
        path.write_bytes(data)
        if readme and os.environ.get("ROOST_SCREENSHOTS"):
            out = Path(os.environ["ROOST_SCREENSHOTS"])
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.png").write_bytes(data)
        return path

    def fits_phone_width(self) -> None:
        """At 390 px wide (a phone) nothing sticks out sideways."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        widths = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], f"{self.model} page is {widths[0]} px wide at phone width {widths[1]}"
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def check_nothing_outside(self) -> None:
        """Everything the page loaded came from its own server, and the CSP refused nothing."""
        urls = self.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        outside = [u for u in urls if not u.startswith((self.server.url + "/", "data:"))]
        assert not outside, outside
        refused = [e["message"] for e in self.driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not refused, refused


def assert_not_blank(png: bytes) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, pixels.shape
    assert pixels.std() > 20, f"screenshot looks blank (pixel std {pixels.std():.1f})"


@pytest.mark.slow
def test_bird_page_classifies_a_photo_and_shows_a_bad_file(page, tmp_path):
    p = page("bird")
    photo = BIRD_EXAMPLES / "bird.jpg"
    p.find("#image").send_keys(str(photo))
    p.wait_shown("#result")
    expected = p.api("/predict", files={"image": photo.read_bytes()}).json()
    assert expected["label"] == "bird"
    assert p.text("#answer").splitlines() == ["bird", f"{100 * expected['probability']:.1f} % sure"]
    bars = [b.text.split("\n") for b in p.find("#bars").find_elements("css selector", "li")]
    assert [b[0] for b in bars] == sorted(expected["probabilities"], key=expected["probabilities"].get, reverse=True)
    assert re.fullmatch(rf"model {expected['model_version']} · answered in \d+ ms", p.text("#timing"))
    assert p.driver.execute_script("return document.querySelector('#photo').width") > 1  # the preview
    p.fits_phone_width()
    p.screenshot()
    p.screenshot("demo-bird-phone", width=390, mobile=True)

    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not a photo\n")
    p.find("#image").send_keys(str(text_file))
    p.wait_shown("#error")
    assert "not a readable image" in p.text("#error") and "HTTP 400" in p.text("#error")
    assert not p.shown("#result")
    p.screenshot("demo-bird-error", readme=False)


@pytest.mark.slow
def test_api_docs_page_shows_roosts_spec_with_the_oip_routes(page):
    p = page("bird")
    spec = httpx.get(p.server.url + "/docs.json", timeout=30).json()
    assert spec["info"]["title"] == "Roost bird" and spec["info"]["version"] not in ("", "None")
    assert spec["info"]["description"].startswith("fast.ai lesson 1's **bird** model") and "contact" not in spec["info"]
    assert "/v2/models/{name}/infer" in spec["paths"]
    p.load("/docs")
    p.wait(lambda d: "/v2/models/{name}/infer" in p.text("#swagger-ui"))
    assert "Roost bird" in p.text("#swagger-ui") and "/predict" in p.text("#swagger-ui")


@pytest.mark.slow
def test_segment_page_overlays_the_mask_with_a_legend(page):
    p = page("segment")
    p.find("#image").send_keys(str(CAMVID_FRAME))
    p.wait_shown("#result")
    expected = p.api("/predict", files={"image": CAMVID_FRAME.read_bytes()}).json()
    size = p.driver.execute_script("const c = document.querySelector('#overlay'); return [c.width, c.height]")
    scale = size[0] // expected["width"]  # drawn larger, at a whole multiple of the mask's size
    assert scale >= 1 and size == [scale * expected["width"], scale * expected["height"]]
    legend = [li.text.split("\n") for li in p.find("#legend").find_elements("css selector", "li")]
    assert sorted(name for name, _ in legend) == sorted(expected["classes"])
    best = max(expected["class_fractions"], key=expected["class_fractions"].get)
    assert legend[0] == [best, f"{100 * expected['class_fractions'][best]:.1f} %"]

    pixel = "return Array.from(document.querySelector('#overlay').getContext('2d').getImageData(0, 0, 64, 64).data)"
    before = p.driver.execute_script(pixel)
    p.driver.execute_script(
        "const s = document.querySelector('#opacity'); s.value = 0; s.dispatchEvent(new Event('input'))")
    assert p.driver.execute_script(pixel) != before  # the slider changes the overlay
    p.driver.execute_script(
        "const s = document.querySelector('#opacity'); s.value = 50; s.dispatchEvent(new Event('input'))")
    p.fits_phone_width()
    p.screenshot()


@pytest.mark.slow
def test_tabular_page_predicts_a_row_and_shows_the_servers_422_beside_the_field(page):
    from selenium.webdriver.support.ui import Select

    p = page("tabular")
    spec = httpx.get(p.server.url + "/demo/spec", timeout=30).json()
    choices = {f["name"]: f["choices"] for f in spec["fields"] if f["type"] == "category"}
    assert len(Select(p.find("#f-workclass")).options) == len(choices["workclass"]) + 1  # + "(unknown)"
    Select(p.find("#f-education")).select_by_visible_text("Masters")
    age = p.find("#f-age")
    age.clear()
    age.send_keys("52")
    p.find("#submit").click()
    p.wait_shown("#result")
    row = {f["name"]: f["default"] for f in spec["fields"]}
    row.update({"education": "Masters", "age": 52})
    expected = p.api("/predict", json={"row": row}).json()
    assert p.text("#answer").splitlines() == [f"salary {expected['salary']}", f"{100 * expected['probability']:.1f} % probability"]
    p.fits_phone_width()
    p.screenshot()

    age.clear()
    age.send_keys("-5")
    p.find("#submit").click()
    p.wait_shown("#f-age-error")
    answer = p.api("/predict", json={"row": {**row, "age": -5}})
    assert answer.status_code == 422
    assert p.text("#f-age-error") == answer.json()["detail"][0]["msg"]
    assert not p.shown("#result")
    p.screenshot("demo-tabular-error")


@pytest.mark.slow
def test_collab_page_recommends_for_a_known_user_and_says_a_new_user_is_cold_start(page):
    from selenium.webdriver.support.ui import Select

    p = page("collab")
    users = Select(p.find("#known"))
    users.select_by_index(1)
    user = int(users.first_selected_option.get_attribute("value"))
    n = p.find("#n")
    n.clear()
    n.send_keys("5")
    p.find("#submit").click()
    p.wait_shown("#result")
    expected = p.api("/recommend", json={"user": user, "n": 5}).json()["recommendations"]
    rows = [r.text.split() for r in p.find("#rows").find_elements("css selector", "tr")]
    assert rows == [[str(i + 1), str(e["movie"]), f"{e['rating']:.2f}"] for i, e in enumerate(expected)]
    assert p.text("#heading") == f"Top 5 for user {user}" and not p.shown("#cold")
    p.fits_phone_width()
    p.screenshot()

    p.find("#typed").send_keys("999999")
    p.find("#submit").click()
    p.wait_shown("#cold")
    assert "New user" in p.text("#cold") and "not known" in p.text("#cold")
    rows = [r.text for r in p.find("#rows").find_elements("css selector", "tr")]
    assert len(rows) == 5 and all("cold start" in r for r in rows)
    p.screenshot("demo-collab-cold-start")
