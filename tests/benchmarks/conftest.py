"""The native load clients for the tests that drive them: installed as test setup where the
tests run as root with apt-get (as CI does), otherwise the test fails naming the command."""

from __future__ import annotations

import pytest

from benchmarks.tools import (
    DEBIAN_PACKAGES,
    ToolMissing,
    can_install_unattended,
    find_tools,
    install,
)


@pytest.fixture(scope="session")
def native_tools() -> dict[str, str]:
    """The path of h2load and of wrk."""
    try:
        return find_tools(*DEBIAN_PACKAGES)
    except ToolMissing as missing:
        if not can_install_unattended():
            pytest.fail(str(missing), pytrace=False)
    install()
    return find_tools(*DEBIAN_PACKAGES)
