"""A headless Chromium driven by selenium, on Debian's chromium and chromium-driver."""

from __future__ import annotations

from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from sysprog import ensure


def chrome():  # type: ignore[no-untyped-def]
    """A headless Chrome session on the system Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = ensure(["chromium", "chromedriver"], ["chromium", "chromium-driver"])
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    return webdriver.Chrome(service=Service(driver), options=options)


@contextmanager
def screenshots_on_failure(driver, pages: dict[str, str], out: Path, node: pytest.Item):  # type: ignore[no-untyped-def]
    """On a failure inside, a screenshot of each page (name -> URL) saved in `out`, their
    paths attached to the test's report as a section of its output."""
    try:
        yield
    except BaseException:
        saved = []
        for name, url in pages.items():
            try:
                driver.get(url)
                _drawn(driver)
                path = out / f"{name}.png"
                driver.save_screenshot(str(path))
                saved.append(f"{name}: {path}")
            except Exception as e:  # a broken page must not hide the test's own failure
                saved.append(f"{name}: no screenshot ({e})")
        node.add_report_section("call", "screenshots", "\n".join(saved))
        raise


# A page has drawn its first look: a table row, a chart, the job, or its notice of trouble.
DRAWN = (
    "return document.readyState === 'complete' && !!document.querySelector("
    "'tbody tr, canvas, #job:not([hidden]), #notice:not([hidden]), .swagger-ui .info')"
)


def _drawn(driver) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    with suppress(TimeoutException):  # not drawn: screenshot it as it is, that is the evidence
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(DRAWN))
