"""`clipsearch serve` in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by .ci/run) driven through Selenium loads the page on a phone-sized
and a desktop-sized window, runs a query typed in the box, sees the thumbnails in the colour
model's order, opens a result, asks for more like it, and goes through the token flow.
Screenshots are saved under test-artifacts/ (or $CLIPSEARCH_TEST_ARTIFACTS)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import REPO
from test_serve import TOKEN, Served, library  # noqa: F401 - the fixture is shared

webdriver = pytest.importorskip("selenium.webdriver")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMEDRIVER and (shutil.which("chromium") or shutil.which("chromium-browser"))),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver)")
ARTIFACTS = Path(os.environ.get("CLIPSEARCH_TEST_ARTIFACTS", REPO / "test-artifacts"))
PHONE, DESKTOP = (390, 844), (1280, 800)


def browser(size):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-background-networking", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    # A window is at least 500 px wide even headless: a phone's screen is emulated instead.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": size[0], "height": size[1], "deviceScaleFactor": 3 if size == PHONE else 1, "mobile": size == PHONE})
    return driver


def wait_for(driver, condition, seconds=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d))


def result_names(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [img.get_attribute("alt") for img in driver.find_elements(By.CSS_SELECTOR, "#results img")]


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_search_open_and_more_like_this(library, cli, size):  # noqa: F811
    from selenium.webdriver.common.by import By

    served = Served(cli)
    driver = browser(size)
    try:
        driver.get(f"http://127.0.0.1:{served.port}/")
        box = driver.find_element(By.ID, "q")
        box.send_keys("red")
        driver.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
        wait_for(driver, lambda d: len(result_names(d)) >= 4)
        names = result_names(driver)
        assert set(names[:2]) == {"red_1.jpg", "red_2.jpg"}, names
        expected = [line.rsplit("/", 1)[1] for line in cli("query", "red", "--top", "6", "--paths").stdout.splitlines()]
        assert names == expected[: len(names)]
        assert "q=red" in driver.current_url
        # Every thumbnail loaded (naturalWidth > 0), none from another origin.
        wait_for(driver, lambda d: d.execute_script(
            "return [...document.images].filter(i => i.closest('#results')).every(i => i.complete && i.naturalWidth > 0)"))
        width = driver.execute_script("return document.querySelector('#results li').getBoundingClientRect().width")
        columns = driver.execute_script("return getComputedStyle(document.getElementById('results'))"
                                        ".gridTemplateColumns.split(' ').length")
        assert columns >= (3 if size == PHONE else 5) and width > 80
        assert driver.execute_script("return document.documentElement.scrollWidth") <= size[0]  # no sideways scroll
        grid = shot(driver, f"serve-{'phone' if size == PHONE else 'desktop'}-results")
        # Open the first result: the photo, its path and facts.
        driver.find_elements(By.CSS_SELECTOR, "#results a")[0].click()
        wait_for(driver, lambda d: d.find_element(By.ID, "viewer").is_displayed())
        wait_for(driver, lambda d: d.execute_script("const i = document.getElementById('large');"
                                                    "return i.complete && i.naturalWidth > 0"))
        facts = driver.find_element(By.ID, "facts").text
        assert names[0] in facts and str(library) in facts
        shot(driver, f"serve-{'phone' if size == PHONE else 'desktop'}-photo")
        # More like this: the photo itself first.
        driver.find_element(By.ID, "similar").click()
        wait_for(driver, lambda d: not d.find_element(By.ID, "viewer").is_displayed() and len(result_names(d)) >= 3)
        assert result_names(driver)[0] == names[0] and "like=" in driver.current_url
        # Back: the text query again.
        driver.back()
        wait_for(driver, lambda d: result_names(d)[:2] == names[:2])
        assert grid.stat().st_size > 5000
    finally:
        driver.quit()
        served.stop()


def test_the_token_flow_in_the_browser(library, cli):  # noqa: F811
    from selenium.webdriver.common.by import By

    served = Served(cli, token=TOKEN)
    driver = browser(PHONE)
    try:
        driver.get(f"http://127.0.0.1:{served.port}/?q=red")
        assert "access link" in driver.find_element(By.TAG_NAME, "body").text  # no token: no photos
        driver.get(f"http://127.0.0.1:{served.port}/?token={TOKEN}")
        wait_for(driver, lambda d: d.current_url.rstrip("/").endswith(str(served.port)))  # token gone from the bar
        cookie = driver.get_cookie("clipsearch_token")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        driver.get(f"http://127.0.0.1:{served.port}/?q=blue")
        wait_for(driver, lambda d: result_names(d)[:1] == ["blue.jpg"])
        shot(driver, "serve-phone-after-token")
    finally:
        driver.quit()
        served.stop()


def test_a_view_link_opened_alone_a_gone_photo_and_the_untrained_note(library, cli, tmp_path, tiny_model):  # noqa: F811
    from selenium.webdriver.common.by import By

    from clipsearch.serve.server import make_server

    served = Served(cli)
    driver = browser(PHONE)
    try:
        # A #view=ID link opened on its own (sent to someone, a bookmark) shows the photo's facts.
        row_id = served.api("q=blue&top=1")[1]["results"][0]["id"]
        driver.get(f"http://127.0.0.1:{served.port}/#view={row_id}")
        wait_for(driver, lambda d: "blue.jpg" in d.find_element(By.ID, "facts").text)
        assert str(library / "blue.jpg") in driver.find_element(By.ID, "facts").text
        # A photo whose disk is gone: a tile saying so, not a broken image.
        (library / "yellow.jpg").rename(tmp_path / "elsewhere.jpg")
        driver.get(f"http://127.0.0.1:{served.port}/?q=yellow")
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .missing"))
        tile = driver.find_element(By.CSS_SELECTOR, "#results .missing")
        assert "yellow.jpg: not available" in tile.text and tile.is_displayed()
        assert driver.execute_script("return [...document.querySelectorAll('#results img')]"
                                     ".every(i => !i.complete || i.naturalWidth > 0)")
        shot(driver, "serve-phone-gone-photo")
        assert not driver.find_element(By.ID, "note").is_displayed()  # a trained model: no note
    finally:
        driver.quit()
        served.stop()
    # An untrained (random-weight) model: the page says so above its results.
    db = tmp_path / "tiny.db"
    from helpers import run_cli

    assert run_cli("index", str(library), "--db", str(db), "--model", str(tiny_model), "--workers", "1").returncode == 0
    server, _ = make_server(db, tiny_model, "127.0.0.1", 0, None, False)
    import threading

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    driver = browser(PHONE)
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/?q=red")
        wait_for(driver, lambda d: d.find_element(By.ID, "note").is_displayed())
        assert "untrained" in driver.find_element(By.ID, "note").text
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def test_a_raw_and_jpeg_pair_shows_its_jpeg_and_offers_the_raw(tmp_path, cli):
    """A RAW+JPEG pair (indexed from its JPEG, no RAW decoder needed): the page shows the JPEG,
    names the RAW in the facts, and its RAW link downloads the RAW file itself."""
    import http.client

    import rawfiles
    from PIL import Image
    from selenium.webdriver.common.by import By

    root = tmp_path / "photos"
    root.mkdir()
    picture = Image.new("RGB", (640, 480), (230, 20, 20))
    (root / "IMG_0007.CR2").write_bytes(rawfiles.make_dng(picture, preview=picture.resize((320, 240))))
    picture.resize((320, 240)).save(root / "IMG_0007.JPG", quality=90)
    cli("index", str(root), "--workers", "1")
    served = Served(cli)
    driver = browser(PHONE)
    try:
        driver.get(f"http://127.0.0.1:{served.port}/?q=red")
        wait_for(driver, lambda d: result_names(d) == ["IMG_0007.JPG"])
        driver.find_elements(By.CSS_SELECTOR, "#results a")[0].click()
        wait_for(driver, lambda d: d.find_element(By.ID, "raw").is_displayed())
        link = driver.find_element(By.ID, "raw")
        assert link.text == "RAW (IMG_0007.CR2)" and str(root / "IMG_0007.CR2") in driver.find_element(By.ID, "facts").text
        href = link.get_attribute("href")
        shot(driver, "serve-phone-raw-pair")
    finally:
        driver.quit()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=20)
        conn.request("GET", href.split(str(served.port), 1)[1])
        response = conn.getresponse()
        assert response.status == 200 and response.read() == (root / "IMG_0007.CR2").read_bytes()
        assert response.getheader("Content-Disposition") == "attachment; filename*=UTF-8''IMG_0007.CR2"
    finally:
        served.stop()


def test_the_duplicates_view_shows_each_group_side_by_side_with_its_evidence(tmp_path, cli):
    from selenium.webdriver.common.by import By
    from test_duplicates import library as duplicate_library

    made = duplicate_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    served = Served(cli)
    driver = browser(DESKTOP)
    try:
        status, _, raw = served.request("/api/duplicates?kind=same&top=5")
        page = __import__("json").loads(raw)
        assert status == 200 and page["total"] == 1 and len(page["groups"][0]["members"]) == 8
        assert served.request("/api/duplicates?top=500")[0] == 400  # bounded like every parameter
        driver.get(f"http://127.0.0.1:{served.port}/")
        driver.find_element(By.ID, "duplicates-link").click()
        wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".group figure")) == 8)
        captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, ".group figcaption")]
        assert captions[0].endswith("best copy") and "1 group of the same picture" in driver.find_element(By.ID, "status").text
        assert any("identical bytes" in c for c in captions) and any("turned" in c for c in captions), captions
        assert not any(str(made["unrelated"]).rsplit("/", 1)[1] in c for c in captions)
        wait_for(driver, lambda d: d.execute_script(
            "return [...document.querySelectorAll('.group img')].every(i => i.complete && i.naturalWidth > 0)"))
        assert "duplicates=1" in driver.current_url
        shot(driver, "serve-desktop-duplicates")
        # A member opens in the photo view, as a search result does.
        driver.find_elements(By.CSS_SELECTOR, ".group a")[1].click()
        wait_for(driver, lambda d: d.find_element(By.ID, "viewer").is_displayed())
        assert str(tmp_path / "photos") in driver.find_element(By.ID, "facts").text
    finally:
        driver.quit()
        served.stop()
