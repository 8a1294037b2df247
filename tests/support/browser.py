"""A headless Chromium driven by selenium, on Debian's chromium and chromium-driver."""

from __future__ import annotations

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
