"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium.
Missing, it is installed when this runs as root with apt-get; otherwise the test fails naming
the one command to run. It is never skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.end_to_end.conftest import timings

__all__ = ["timings"]  # the end-to-end tests' measured seconds, shown in the summary

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "sudo apt-get install -y chromium chromium-driver"
APT_TIMEOUT_S = 900


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver if they are missing and we may."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"the dashboard tests need Chromium and its driver; run: {INSTALL}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    if subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S).returncode:
        # NOTE: a fresh image has no package lists yet: fetch them once and try again.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
        done = subprocess.run(
            install, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S
        )
        if done.returncode:
            pytest.fail(f"installing Chromium failed ({done.stderr[-500:]}); run: {INSTALL}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
