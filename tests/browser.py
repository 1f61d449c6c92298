"""A real headless Chromium for the web UI tests (and tools/ui_screenshots.py), driven through
selenium's Chrome driver with Debian's /usr/bin/chromium and /usr/bin/chromedriver (packages
``chromium`` and ``chromium-driver``; .ci/run installs them).

Missing browser: locally the UI tests skip with the reason; in CI (``CI=true``, or
``AMQPD_INTEROP_REQUIRE_ALL=1`` as .ci/run sets) they fail, so a CI machine without Chromium
can never pass by skipping."""
import os
import shutil

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first(env: str, candidates, name: str) -> str | None:
    if os.environ.get(env):                 # an explicit choice: that one or none
        return os.environ[env] if os.path.exists(os.environ[env]) else None
    for path in candidates:
        if os.path.exists(path):
            return path
    return shutil.which(name)


def required() -> bool:
    """CI demands the browser tests run (a skip there would hide a broken UI)."""
    return (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or os.environ.get("AMQPD_INTEROP_REQUIRE_ALL") == "1")


def missing_reason() -> str | None:
    """Why a headless Chromium cannot be started here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    if not _first("AMQPD_CHROMIUM", CHROMIUM_CANDIDATES, "chromium"):
        return "no Chromium (apt-get install chromium chromium-driver)"
    if not _first("AMQPD_CHROMEDRIVER", DRIVER_CANDIDATES, "chromedriver"):
        return "no chromedriver (apt-get install chromium-driver)"
    return None


def make_driver(width: int = 1360, height: int = 900):
    """A headless Chromium session (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _first("AMQPD_CHROMIUM", CHROMIUM_CANDIDATES, "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--disable-background-networking",
                "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(arg)
    # root in a container has no user namespace sandbox; CI runs as root
    service = Service(executable_path=_first("AMQPD_CHROMEDRIVER", DRIVER_CANDIDATES, "chromedriver"))
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (starting one takes about a second)."""
    reason = missing_reason()
    if reason:
        if required():
            pytest.fail(f"the UI tests must run in CI but cannot: {reason}")
        pytest.skip(reason)
    driver = make_driver()
    yield driver
    driver.quit()
