"""One store of tiny trained runs (registered, promoted) and one real `affina serve --auth keys`
over it for the whole dashboard suite, plus a headless Chromium where one is installed."""

from __future__ import annotations

import pytest

from tests.dashboard.stores import CHROMIUM, CHROMIUM_ARGS, ServeProcess, build_store


@pytest.fixture(scope="session")
def dashboard_store(tmp_path_factory, tiny_model_dir) -> dict:
    """Runs `alpha` (12 steps) and `beta` (2 steps) registered as support@1 and support@2;
    support@champion → 1 (promoted over the base; beta's promotion refused), support@candidate → 2."""
    return build_store(tmp_path_factory.mktemp("dashboard"), str(tiny_model_dir))


@pytest.fixture(scope="session")
def dashboard_server(dashboard_store):
    """(server, an admin key for every model, a key for `alpha` only)."""
    from affina.serve.auth import KeyStore

    tmp = dashboard_store["tmp"]
    keys = KeyStore(tmp / "keys.db")
    _, admin = keys.create("dashboard", ["*"], admin=True)
    _, alpha_only = keys.create("alpha team", ["alpha"])
    server = ServeProcess(tmp, dashboard_store["store"], auth="keys").wait_ready()
    try:
        yield server, admin, alpha_only
    finally:
        server.stop()


def chromium_or_skip():
    """Playwright driving the system Chromium, or a skip that says what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need Playwright for Python: pip install playwright "
                    "(the 'test' extra has it); its own browser download is not needed")
    if not CHROMIUM.is_file():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM}: apt-get install chromium "
                    "(or point AFFINA_CHROMIUM at a Chromium binary); .ci/run installs it")
    return sync_playwright


@pytest.fixture(scope="session")
def chromium():
    sync_playwright = chromium_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
