"""The web demo in a real browser: Debian's headless chromium driven by selenium through chromedriver.

Skipped only when chromium or chromedriver is missing (`apt-get install -y chromium chromium-driver`);
gradio and selenium come with the project's ``test`` extra. The model is conftest's tiny overfitted one, and SASG
runs with a CLIP trained for 5 steps: the test checks the page, not the answers' quality.
"""

import shutil
import socket

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from clinkd.interactive.demo import build_demo, launch_demo
from clinkd.interactive.infer import load_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver",
    ),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),  # gradio's own pandas calls
]
WAIT_S = 120  # generous: the CI machine has 2 cores


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def demo_url(trained_checkpoint, tiny_sasg):
    model, processor = load_model(trained_checkpoint)
    blocks = build_demo(model, processor, selector=tiny_sasg)
    url = launch_demo(blocks, host="127.0.0.1", port=free_port())
    yield url
    blocks.close()


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _text(driver, selector):
    return driver.find_element(By.CSS_SELECTOR, selector).get_attribute("value")


def test_upload_ask_and_see_the_answer_with_its_boxes(demo_url, browser, overfit_image, tmp_path):
    wait = WebDriverWait(browser, WAIT_S)
    assert demo_url.startswith("http://127.0.0.1:")
    browser.get(demo_url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ask"))

    browser.find_element(By.CSS_SELECTOR, "#ask").click()  # nothing uploaded yet: an error line, no crash
    wait.until(lambda d: "upload an image" in d.find_element(By.CSS_SELECTOR, "#status").text)

    browser.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(overfit_image))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input img"))
    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("liver")
    browser.find_element(By.CSS_SELECTOR, "#ask").click()

    answer = wait.until(lambda d: _text(d, "#answer textarea"))
    drawn = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"))[0]
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", drawn))
    assert browser.execute_script("return arguments[0].naturalWidth", drawn) == 448  # 112 px enlarged 4×
    status = browser.find_element(By.CSS_SELECTOR, "#status").text
    assert status.startswith("VG") and "selected by sasg from 3 candidates" in status
    table = browser.find_element(By.CSS_SELECTOR, "#candidates").text
    assert answer in table and "score" in table  # SASG's pick, listed with its CLIP score

    screenshot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(screenshot))
    with Image.open(screenshot) as shot:
        assert shot.size[0] >= 1000 and shot.getextrema() != ((255, 255), (255, 255), (255, 255))
