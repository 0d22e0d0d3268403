"""Headless Chromium for the console's browser tests (Debian's chromium + chromium-driver, Selenium).

``tests/ensure_browser.sh`` installs both (``.ci/run`` and ``make test`` call it).
The driver is started with explicit paths, so Selenium never downloads anything.

::

    with chromium() as driver: ...
    shot(driver, "skills")           # a PNG, into docs/console/ when CONSOLE_SCREENSHOTS=1
    unlabelled(driver)               # visible form controls without a label (should be [])
    tab_to(driver, "confirm")        # press Tab until that element has the focus
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1000")
SHOTS = REPO / "docs" / "console"
#: the whole page is captured, up to this many pixels high
MAX_SHOT_HEIGHT = 3200


@contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: run tests/ensure_browser.sh (Debian chromium, chromium-driver)"
    profile = tempfile.mkdtemp(prefix="sandgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    from selenium.common.exceptions import WebDriverException

    for attempt in range(2):
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        try:
            driver.get("about:blank")  # a browser whose renderer died at start is started again, once
            break
        except WebDriverException:
            driver.quit()
            if attempt == 1:
                raise
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver: Any, name: str, out: Path) -> Path:
    """A screenshot of the page as ``name.png`` in ``out`` (and in docs/console/ when asked)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    size = driver.get_window_size()
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(size["width"], min(max(int(height) + 120, size["height"]), MAX_SHOT_HEIGHT))
    try:
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(path)), f"no screenshot of {name}"
    finally:
        driver.set_window_size(size["width"], size["height"])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f"{name}.png is not a real screenshot"
    if os.environ.get("CONSOLE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SHOTS / path.name)
    return path


#: a visible control is labelled by <label for=id>, an enclosing <label>, aria-label or aria-labelledby
UNLABELLED_JS = """
const out = [];
for (const el of document.querySelectorAll('input, select, textarea')) {
  if (el.type === 'hidden') continue;
  const labelled = (el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]'))
    || el.closest('label') || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
  if (!labelled) out.push(el.outerHTML.slice(0, 120));
}
return out;
"""


def unlabelled(driver: Any) -> list[str]:
    result: list[str] = driver.execute_script(UNLABELLED_JS)
    return result


def focused_id(driver: Any) -> str:
    value: str = driver.execute_script("return document.activeElement ? document.activeElement.id : ''")
    return value


def tab_to(driver: Any, element_id: str, *, limit: int = 80) -> None:
    """Press Tab (from the top of the page) until ``element_id`` has the focus."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.activeElement && document.activeElement.blur(); window.focus();")
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if focused_id(driver) == element_id:
            return
    raise AssertionError(f"#{element_id} is not reachable with Tab (last focus: {focused_id(driver)!r})")


def press_enter(driver: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ENTER).perform()
