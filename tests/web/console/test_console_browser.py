"""The web console in a real browser (Debian's Chromium, headless) against a running fieldbridge:
log in, find a device, toggle a flag, queue an Efento downlink, steer a sink, retry a dead
letter, watch the live view; a screenshot of every page goes to var/test-artifacts/."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from fieldbridge.model import DeadLetterState
from fieldbridge.store import Pending
from tests.conftest import wait_until
from tests.support.console import ADMIN, VIEWER, ConsoleService
from tests.support.processes import WebhookReceiver
from tests.web.console.conftest import screenshot
from tests.web.console.seed import EFENTO_SERIAL, KIT, describe, past_hour, post, seed

pytestmark = pytest.mark.browser


def log_in(page: Page, fb: ConsoleService, who: tuple[str, str], path: str = "/") -> None:
    """Open `path` as a stranger, get sent to /login, log in there and come back to `path`."""
    page.goto(fb.base_url + path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("User name").fill(who[0])
    page.get_by_label("Password").fill(who[1])
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(fb.base_url + path)
    expect(page.get_by_test_id("user")).to_contain_text(who[0])


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture
def fb(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[ConsoleService]:
    sinks = {"webhook": [{"name": "hook", "url": receiver.url}]}
    with ConsoleService(tmp_path / "svc", sinks=sinks) as service:
        seed(service.ingest_url)
        service.call(lambda: describe(service.store))
        yield service


def test_overview_and_devices(fb: ConsoleService, page: Page) -> None:
    fb.call(lambda: fb.store.commit(past_hour(time.time())))
    log_in(page, fb, ADMIN)
    expect(page.get_by_test_id("devices-count")).to_have_text("6")
    expect(page.get_by_test_id("quarantine-count")).to_have_text("1")
    expect(page.locator(".chart canvas").first).to_be_visible()
    expect(page.locator("table.sinks")).to_contain_text("hook")
    screenshot(page, "overview")

    page.get_by_role("navigation").get_by_role("link", name="Devices").click()
    page.get_by_role("searchbox").fill("4156af")
    rows = page.locator("#device-rows tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(EFENTO_SERIAL)
    page.get_by_role("searchbox").fill("")
    expect(rows).to_have_count(6)
    screenshot(page, "devices")

    page.get_by_role("link", name=KIT).click()
    expect(page.locator("h1")).to_contain_text(KIT)
    expect(page.locator("figcaption")).to_have_count(2)  # humidity and temperature
    expect(page.locator(".chart canvas")).to_have_count(2)
    expect(page.locator("details.raw").first).to_contain_text("temperature")
    screenshot(page, "device")


def test_toggling_a_flag_writes_the_store(fb: ConsoleService, page: Page) -> None:
    log_in(page, fb, ADMIN, "/devices/" + KIT)
    switch = page.locator('button[role=switch][data-flag="upload_trapnz"]')
    expect(switch).to_have_attribute("aria-checked", "false")
    switch.click()
    expect(page.locator('button[role=switch][data-flag="upload_trapnz"]')).to_have_attribute(
        "aria-checked", "true"
    )
    device = fb.call(lambda: fb.store.get_device(KIT))
    assert device is not None and device.flags == {"upload_trapnz": True}
    page.locator('button[role=switch][data-flag="upload_trapnz"]').click()
    expect(page.locator('button[role=switch][data-flag="upload_trapnz"]')).to_have_attribute(
        "aria-checked", "false"
    )
    device = fb.call(lambda: fb.store.get_device(KIT))
    assert device is not None and device.flags == {"upload_trapnz": False}


def test_efento_form_queues_a_downlink(fb: ConsoleService, page: Page) -> None:
    log_in(page, fb, ADMIN, "/devices/" + EFENTO_SERIAL)
    page.get_by_label("Transmission interval (s)").fill("900")
    page.get_by_label("Measurement period base (s)").fill("60")
    page.get_by_label("ask for its configuration").check()
    page.get_by_role("button", name="Queue downlink").click()
    expect(page.locator("#downlinks .notice.ok")).to_contain_text("queued downlink 1")
    expect(page.locator("#downlinks tr[data-downlink]")).to_have_count(1)
    [downlink] = fb.call(lambda: fb.store.pending_downlinks(EFENTO_SERIAL))
    assert downlink.origin == "console"
    assert downlink.fields == {
        "measurement_period_base": 60,
        "transmission_interval": 900,
        "configuration_request": True,
    }
    assert downlink.expect_hash_change is True
    screenshot(page, "device-efento")

    page.get_by_label("Other settings, one NAME=VALUE a line").fill("no_such_setting=1")
    page.get_by_role("button", name="Queue downlink").click()
    expect(page.locator("#downlinks .notice.error")).to_contain_text("no_such_setting")
    assert len(fb.call(lambda: fb.store.pending_downlinks(EFENTO_SERIAL))) == 1

    page.on("dialog", lambda dialog: dialog.accept())  # Cancel asks first
    page.locator('#downlinks tr[data-downlink="1"]').get_by_role("button", name="Cancel").click()
    expect(page.locator("#downlinks .notice.ok")).to_contain_text("downlink 1 cancelled")
    expect(page.locator("#downlinks tr[data-downlink]")).to_have_count(0)
    assert fb.call(lambda: fb.store.pending_downlinks(EFENTO_SERIAL)) == []
    cancelled = fb.call(lambda: fb.store.get_downlink(1))
    assert (
        cancelled is not None
        and cancelled.failed_reason == f"cancelled in the console by {ADMIN[0]}"
    )


def test_pause_and_resume_a_sink(fb: ConsoleService, page: Page) -> None:
    log_in(page, fb, ADMIN, "/sinks")
    row = page.locator('tr[data-sink="hook"]')
    row.get_by_role("button", name="Pause").click()
    expect(row.get_by_test_id("state")).to_have_text("paused")
    assert fb.call(lambda: fb.store.sink_state("hook")).paused
    screenshot(page, "sinks")
    row.get_by_role("button", name="Resume").click()
    expect(row.get_by_role("button", name="Pause")).to_be_visible()
    assert not fb.call(lambda: fb.store.sink_state("hook")).paused
    assert fb.call(lambda: fb.store.count_quarantine()) == 1


def test_retrying_a_dead_letter_sends_it_again(
    fb: ConsoleService, page: Page, receiver: WebhookReceiver
) -> None:
    wait_until(lambda: len(receiver.ids()) == 180, "the sink to deliver the seeded messages")
    fb.call(lambda: fb.store.add_dead_letter("hook", 7, 400, '{"error": "bad reading"}'))
    before = receiver.received[7]
    log_in(page, fb, ADMIN, "/sinks")
    dead = page.locator('#dead-letters tr[data-dead="1"]')
    expect(dead).to_contain_text("bad reading")
    screenshot(page, "sinks-dead-letters")
    dead.get_by_role("button", name="Retry").click()
    expect(page.locator("#dead-letters .notice.ok")).to_contain_text("will be sent again")
    # The running sink takes it: sends message 7 again and forgets the dead letter.
    wait_until(lambda: receiver.received[7] > before, "the sink to send message 7 again")
    wait_until(
        lambda: not fb.call(lambda: fb.store.list_dead_letters(state=DeadLetterState.RETRY)),
        "the retried dead letter to be resolved",
    )


def test_replay_from_a_time_shows_progress(fb: ConsoleService, page: Page) -> None:
    log_in(page, fb, ADMIN, "/sinks")
    page.get_by_label("send again what arrived from (UTC)").fill("2020-01-01T00:00:00")
    page.get_by_role("button", name="Replay").click()
    box = page.locator('#replay-progress [data-replay="hook"]')
    expect(box).to_have_attribute("data-finished", "true", timeout=15_000)
    expect(box).to_contain_text("messages sent again")


def test_live_view_shows_a_message_published_now(fb: ConsoleService, page: Page) -> None:
    log_in(page, fb, ADMIN, "/live")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
    assert post(fb.ingest_url, {"device": "live-1", "readings": {"t": 21.5}}).status_code == 200
    assert post(fb.ingest_url, {"device": "live-1", "readings": {"t": "x"}}).status_code == 422
    rows = page.locator("#live-events tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("live-1")
    expect(rows.nth(1)).to_contain_text("t=21.5")
    expect(rows.nth(0)).to_contain_text("rejected")
    screenshot(page, "live")

    page.goto(fb.base_url + "/live?device=other")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
    post(fb.ingest_url, {"device": "live-1", "readings": {"t": 1}})
    post(fb.ingest_url, {"device": "other", "readings": {"t": 2}})
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("other")


def test_quarantine_shows_the_raw_payload_and_reingests_or_drops_it(
    fb: ConsoleService, page: Page
) -> None:
    # A payload an older codec refused, which the http source's codec takes now.
    fixed = b'{"device": "late-1", "readings": {"t": 1.5}}'
    older = Pending("http", time.time(), "{}", fixed, reason="an older codec refused it")
    fb.call(lambda: fb.store.commit([older]))
    page.on("dialog", lambda dialog: dialog.accept())  # the Drop button asks first
    log_in(page, fb, ADMIN, "/quarantine")
    refused, taken = page.locator('[data-quarantine="1"]'), page.locator('[data-quarantine="2"]')
    expect(refused).to_contain_text("readings.temperature: must be a number")
    expect(refused.locator("pre.text")).to_contain_text('"warm"')
    expect(refused.locator("pre.hex")).to_contain_text("7b 22")
    expect(taken).to_contain_text("an older codec refused it")
    screenshot(page, "quarantine")

    taken.get_by_role("button", name="Re-ingest").click()
    expect(page.locator(".notice.ok")).to_contain_text("payload 2 re-ingested: stored as messages")
    assert fb.call(lambda: fb.store.get_quarantined(2)) is None
    assert [r.reading.value for r in fb.call(lambda: fb.store.list_readings("late-1"))] == [1.5]

    refused.get_by_role("button", name="Re-ingest").click()
    expect(refused.locator(".notice.error")).to_contain_text("the codec still refuses it")
    assert fb.call(lambda: fb.store.count_quarantine()) == 1
    refused.get_by_role("button", name="Drop").click()
    expect(page.locator(".notice.ok").filter(has_text="payload 1 dropped")).to_be_visible()
    assert fb.call(lambda: fb.store.count_quarantine()) == 0


def test_a_viewer_sees_everything_and_changes_nothing(fb: ConsoleService, page: Page) -> None:
    log_in(page, fb, VIEWER, "/devices/" + KIT)
    switch = page.locator('button[role=switch][data-flag="upload_trapnz"]')
    expect(switch).to_be_disabled()
    expect(page.get_by_role("link", name="Audit")).to_have_count(0)
    csrf = page.locator("nav input[name=csrf_token]").get_attribute("value") or ""
    for path, form in (
        (f"/devices/{KIT}/flags", {"flag": "upload_trapnz", "on": "true"}),
        (f"/devices/{EFENTO_SERIAL}/efento", {"transmission_interval": "900"}),
        ("/sinks/hook/pause", {}),
        ("/sinks/replay", {"sink": "hook", "since": "2020-01-01T00:00:00"}),
        ("/deadletters/1/retry", {}),
        ("/deadletters/1/drop", {}),
        ("/quarantine/1/reingest", {}),
        ("/quarantine/1/drop", {}),
        ("/downlinks/1/cancel", {}),
    ):
        answer = page.request.post(
            fb.base_url + path, form=form, headers={"X-CSRF-Token": csrf}, max_redirects=0
        )
        assert answer.status == 403, (path, answer.text())
        assert "may look but not change" in answer.text()
    assert page.request.get(fb.base_url + "/audit").status == 403
    device = fb.call(lambda: fb.store.get_device(KIT))
    assert device is not None and device.flags == {}
    assert fb.call(lambda: fb.store.pending_downlinks()) == []
    assert not fb.call(lambda: fb.store.sink_state("hook")).paused


def test_changes_are_in_the_audit_log_and_logout_ends_the_session(
    fb: ConsoleService, page: Page
) -> None:
    log_in(page, fb, ADMIN, "/devices/" + KIT)
    page.locator('button[role=switch][data-flag="upload_influxdb"]').click()
    expect(page.locator('button[role=switch][data-flag="upload_influxdb"]')).to_have_attribute(
        "aria-checked", "true"
    )
    page.get_by_role("navigation").get_by_role("link", name="Audit").click()
    entry = page.locator("tbody tr").filter(has_text="device.update")
    expect(entry).to_contain_text(ADMIN[0])
    expect(entry).to_contain_text(KIT)
    expect(entry).to_contain_text('"upload_influxdb": true')
    screenshot(page, "audit")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto(fb.base_url + "/sinks")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fsinks"))
