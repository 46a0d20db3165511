"""The fleet dashboard against a running service: uvicorn, SQLite, a real broker and the release service.

Devices report real status messages on their own status topics (:class:`fleet_reports.Fleet`).
The browser test drives Debian's Chromium through Playwright; ``FEDGE_DASHBOARD_SCREENSHOT=docs/dashboard.png``
makes it save the README's screenshot after the release.
"""

from __future__ import annotations

import logging
import os
import re
from types import SimpleNamespace

import httpx
import pytest
from fleet_reports import Fleet
from waiting import PATIENCE_S, poll

from sdk.cloud import dashboard_session
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.cloud.rollout_policy import RolloutPolicies, RolloutPolicy
from sdk.cloud.rollout_store import RolloutStore
from sdk.cloud.routes.dashboard import COOKIE
from sdk.cloud.server import BackgroundServer
from sdk.edge.rollout import in_rollout
from sdk.mqtt import MqttSettings
from sdk.registry_client import RegistryClient

READER = "dashboard-reader-0123456789abcdef"
ADMIN = "dashboard-admin-0123456789abcdef"
STAGES = (50, 100)
CHROMIUM = os.environ.get("FEDGE_TEST_CHROMIUM", "/usr/bin/chromium")


def device_ids() -> list[str]:
    """Two devices the first stage (50 %) of ``digits`` admits, then two it does not, by their stable bucket."""
    ids = [f"pi-{i}" for i in range(100)]
    admitted = [d for d in ids if in_rollout(d, "digits", STAGES[0])][:2]
    return [*admitted, *[d for d in ids if not in_rollout(d, "digits", STAGES[0])][:2]]


@pytest.fixture
def fleet_service(tmp_path, repo, broker, versions):
    """digits v1 released and run by four devices, v2 registered; the release service and the API with keys."""
    settings = MqttSettings.from_address(broker.address)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    for version in (1, 2):
        registry.add_version(versions(version))
    registry.release("digits", 1)
    store = RolloutStore(registry, RolloutPolicies(default=RolloutPolicy(stages=STAGES)))
    service = ReleaseService(registry, settings).start()
    config = CloudConfig(api_keys=(READER,), admin_keys=(ADMIN,))
    server = BackgroundServer(create_app({}, config, registry=registry, rollouts=store)).start()
    ids = device_ids()
    fleet = Fleet(settings, ids)
    for n, device_id in enumerate(ids):
        fleet.serve(device_id, 1, errors=n, fallbacks=2 * n)
    poll(lambda: [d["running_version"] for d in registry.fleet()] == [1] * len(ids), "every device reported v1")
    try:
        yield SimpleNamespace(url=server.url, registry=registry, fleet=fleet, ids=ids)
    finally:
        server.stop()
        service.stop()
        registry.close()


def _sign_in(client: httpx.Client) -> None:
    answer = client.post("/dashboard/login", data={"key": READER})
    assert answer.status_code == 303, answer.text


def test_without_a_session_the_page_sends_to_the_login_and_the_fragment_is_refused(fleet_service):
    with httpx.Client(base_url=fleet_service.url, follow_redirects=False) as client:
        page = client.get("/dashboard")
        assert (page.status_code, page.headers["location"]) == (303, "/dashboard/login")
        assert client.get("/dashboard", headers={"X-API-Key": "not-the-key-0123456789"}).status_code == 303
        assert client.get("/dashboard/fleet").status_code == 401
        assert client.get("/dashboard/fleet", cookies={COOKIE: "4102444800.00ff"}).status_code == 401
        form = client.get("/dashboard/login")
        assert form.status_code == 200
        assert 'name="key"' in form.text
        assert "pi-" not in form.text  # the form shows nothing of the fleet


def test_a_wrong_key_is_refused_with_the_form_again_and_no_cookie(fleet_service, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-key-0123456789abcdef"
    with httpx.Client(base_url=fleet_service.url, follow_redirects=False) as client:
        answer = client.post("/dashboard/login", data={"key": wrong})
        assert answer.status_code == 401
        assert "not accepted" in answer.text
        assert wrong not in answer.text
        assert "set-cookie" not in answer.headers
        assert client.get("/dashboard").status_code == 303
    assert wrong not in caplog.text


def test_a_session_cookie_opens_the_page_which_holds_no_key(fleet_service, caplog):
    caplog.set_level(logging.DEBUG)
    with httpx.Client(base_url=fleet_service.url, follow_redirects=False) as client:
        _sign_in(client)
        cookie = next(c for c in client.cookies.jar if c.name == COOKIE)
        assert READER not in cookie.value
        assert cookie.path == "/dashboard"
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert cookie.get_nonstandard_attr("SameSite") == "strict"
        page = client.get("/dashboard")
        assert page.status_code == 200, page.text
        assert READER not in page.text
        assert READER not in client.get("/dashboard/fleet").text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for device_id in fleet_service.ids:
            assert re.search(rf'data-device="{device_id}".*?class="version">v1<', page.text, re.S), device_id
    assert READER not in caplog.text


def test_the_key_header_opens_the_page_for_scripts(fleet_service):
    answer = httpx.get(f"{fleet_service.url}/dashboard/fleet", headers={"X-API-Key": READER})
    assert answer.status_code == 200
    assert 'data-release="1"' in answer.text


def _tampered(token: str) -> str:
    """``token`` with its last hex digit changed (to another digit: "0" may already be there)."""
    return token[:-1] + ("1" if token.endswith("0") else "0")


@pytest.mark.parametrize(
    ("token", "keys"),
    [
        pytest.param(dashboard_session.issue(READER), (ADMIN,), id="a-key-no-longer-configured"),
        pytest.param(dashboard_session.issue(READER, now=1000.0), (READER,), id="expired"),
        pytest.param(_tampered(dashboard_session.issue(READER)), (READER,), id="tampered"),
        pytest.param(f"99999999999.{'0' * 64}", (READER,), id="forged"),
        pytest.param("", (READER,), id="empty"),
    ],
)
def test_a_session_token_is_refused(token, keys):
    assert not dashboard_session.valid(token, keys)


def test_a_fresh_session_token_is_accepted_under_its_key():
    assert dashboard_session.valid(dashboard_session.issue(READER), (ADMIN, READER))


def test_without_api_keys_or_registry_the_page_is_open_and_says_there_is_no_fleet():
    with BackgroundServer(create_app({})) as server:
        answer = httpx.get(f"{server.url}/dashboard")
    assert answer.status_code == 200
    assert "runs no registry" in answer.text


def test_chromium_shows_the_devices_and_follows_a_staged_release_live(fleet_service):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the dev extra): it drives Chromium in this test"
    )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install.sh installs Debian's chromium; FEDGE_TEST_CHROMIUM)")
    expect, wait_ms = sync_api.expect, PATIENCE_S * 1000
    c = fleet_service
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 560})
            page.goto(f"{c.url}/dashboard")
            expect(page).to_have_url(f"{c.url}/dashboard/login", timeout=wait_ms)
            page.fill("#key", READER)
            page.click("#login button")
            expect(page).to_have_url(f"{c.url}/dashboard", timeout=wait_ms)

            def version_of(device_id: str):
                return page.locator(f'tr[data-device="{device_id}"] td.version')

            for device_id in c.ids:
                expect(version_of(device_id)).to_have_text("v1", timeout=wait_ms)
            expect(page.locator('tr[data-release="1"] td.devices')).to_have_text("4", timeout=wait_ms)
            served = page.locator(f'tr[data-device="{c.ids[3]}"]')  # 3 errors in 30 calls, 6 of 27 rows fell back
            expect(served.locator("td.error-rate")).to_have_text("10.0 %", timeout=wait_ms)
            expect(served.locator("td.fallback-rate")).to_have_text("22.2 %", timeout=wait_ms)
            page.evaluate("window.fedgeNotReloaded = true")  # gone if the page were loaded again

            RegistryClient(c.url, ADMIN).release("digits", 2, staged=True)
            c.fleet.follow(c.registry, 2)
            on_v2 = sorted(d for d, v in c.fleet.running.items() if v == 2)
            assert on_v2 == sorted(c.ids[:2])

            for device_id in c.ids:
                expect(version_of(device_id)).to_have_text(f"v{c.fleet.running[device_id]}", timeout=wait_ms)
            release = page.locator('tr[data-release="2"]')
            expect(release.locator("td.stage")).to_have_text("stage 1/2 (50 %), running", timeout=wait_ms)
            expect(release.locator("td.devices")).to_have_text("2", timeout=wait_ms)
            expect(page.locator('tr[data-release="1"] td.devices')).to_have_text("2", timeout=wait_ms)
            assert page.evaluate("window.fedgeNotReloaded") is True  # the script updated the page in place
            if shot := os.environ.get("FEDGE_DASHBOARD_SCREENSHOT"):
                page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()
