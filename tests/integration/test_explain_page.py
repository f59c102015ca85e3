"""The explain page in a real browser (R16): Debian's headless Chromium driven by Selenium.

A person types a request id into the form, submits, reads the routes and the rule ids, and
follows a rule link to its text on /policy. Needs ``chromium`` and ``chromium-driver``
(Debian packages; ``.ci/run`` installs them); skipped with that reason when absent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, audit_decision, explain_service
from tests.integration.test_audit_index import explain

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture()
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "no chromium/chromedriver here: `apt-get install chromium chromium-driver`"
            " (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    # The Debian driver, never one Selenium Manager would download.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def service(stack: Stack, tmp_path: Path) -> Iterator[str]:
    with explain_service(stack, tmp_path) as url:
        yield url


def test_a_person_explains_a_request_in_the_browser_R16(
    stack: Stack, service: str, browser: object
) -> None:
    """Type the id, submit, read routes and rules, follow R2 to its text in the policy."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as arrived
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    # A click that submits or follows a link returns before the next page is there
    # (a clean-clone CI run found no ".routes" yet): wait for what the page must show.
    wait = WebDriverWait(browser, 15)
    record = audit_decision("r-zdr", rules=("R2", "R3"))
    stack.produce("audit", [("r-zdr", record)])
    explain(service, "r-zdr")  # indexed

    browser.get(service + "/")
    field = browser.find_element(By.ID, "id")
    field.send_keys("r-zdr")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    routes = wait.until(arrived.presence_of_element_located((By.CLASS_NAME, "routes")))
    assert routes.text == "usage"
    links = browser.find_elements(By.CSS_SELECTOR, "section.decision a")
    assert [link.text for link in links] == ["R2", "R3"]
    assert browser.find_element(By.TAG_NAME, "time").text.endswith("Z")
    links[0].click()
    wait.until(arrived.url_to_be(service + "/policy#r2"))
    rule = wait.until(arrived.presence_of_element_located((By.ID, "r2")))
    assert "Zero data retention" in rule.text
