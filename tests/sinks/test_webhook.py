"""The webhook body, its idempotency key, and how HTTP answers are classified (pure, no I/O)."""

from __future__ import annotations

import base64
import email.utils
import time

import httpx
import orjson
import pytest

from fieldbridge.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from fieldbridge.model import JournalEntry, Reading
from fieldbridge.sinks.http_errors import check_response, retry_after, transport_failure
from fieldbridge.sinks.webhook import SCHEMA, idempotency_key, render_batch

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def entries() -> list[JournalEntry]:
    return [
        JournalEntry(
            id=7,
            received_at=T0 + 0.25,
            source="http",
            device="weather-1",
            kind="weather",
            meta={"remote": "10.0.0.9"},
            payload=b'{"device": "weather-1"}',
            readings=(
                Reading("temperature", 21.5, T0, 0, "Cel"),
                Reading("humidity", None, T0 - 60.0, 2, None, {"quality": "bad"}),
            ),
        ),
        JournalEntry(
            id=9,
            received_at=T0 + 1,
            source="mqtt",
            device="soil-3",
            kind=None,
            meta={},
            payload=b"\x00\xffraw",
        ),
    ]


def test_body_follows_the_schema_exactly() -> None:
    body = orjson.loads(render_batch("hook", entries(), include_payload=False))
    assert body == {
        "schema": SCHEMA,
        "sink": "hook",
        "batch": {"first_id": 7, "last_id": 9, "count": 2},
        "messages": [
            {
                "id": 7,
                "received_at": "2023-11-14T22:13:20.250000Z",
                "source": "http",
                "device": "weather-1",
                "kind": "weather",
                "meta": {"remote": "10.0.0.9"},
                "readings": [
                    {
                        "quantity": "temperature",
                        "value": 21.5,
                        "unit": "Cel",
                        "channel": 0,
                        "measured_at": "2023-11-14T22:13:20Z",
                        "extra": None,
                    },
                    {
                        "quantity": "humidity",
                        "value": None,
                        "unit": None,
                        "channel": 2,
                        "measured_at": "2023-11-14T22:12:20Z",
                        "extra": {"quality": "bad"},
                    },
                ],
            },
            {
                "id": 9,
                "received_at": "2023-11-14T22:13:21Z",
                "source": "mqtt",
                "device": "soil-3",
                "kind": None,
                "meta": {},
                "readings": [],
            },
        ],
    }
    assert SCHEMA == "fieldbridge.webhook/1"


def test_include_payload_adds_base64_of_the_raw_bytes() -> None:
    batch = entries()
    body = orjson.loads(render_batch("hook", batch, include_payload=True))
    encoded = [m["payload_b64"] for m in body["messages"]]
    assert [base64.b64decode(e) for e in encoded] == [e.payload for e in batch]
    assert encoded[1] == "AP9yYXc="
    without = orjson.loads(render_batch("hook", batch, include_payload=False))
    assert all("payload_b64" not in m for m in without["messages"])


def test_body_is_compact_utf8_json() -> None:
    entry = JournalEntry(1, T0, "http", "capteur-é", None, {}, b"", ())
    raw = render_batch("hook", [entry], include_payload=False)
    assert "capteur-é".encode() in raw
    assert orjson.loads(raw)["messages"][0]["device"] == "capteur-é"


def test_idempotency_key_names_sink_and_id_range() -> None:
    assert idempotency_key("hook", entries()) == "hook:7-9"
    assert idempotency_key("a.b-c", entries()[:1]) == "a.b-c:7-7"


def answer(status: int, *, headers: dict[str, str] | None = None, text: str = "") -> httpx.Response:
    return httpx.Response(
        status,
        headers=headers,
        text=text,
        request=httpx.Request("POST", "http://127.0.0.1:9/hook"),
    )


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    check_response(answer(status), "webhook x")  # returns without raising


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 425, 429, 401, 403, 407])
def test_5xx_408_425_429_and_credential_errors_are_retryable(status: int) -> None:
    with pytest.raises(RetryableDeliveryError) as caught:
        check_response(answer(status, text="busy"), "webhook x")
    err = caught.value
    assert err.retryable and err.status == status and err.body == "busy"
    assert err.retry_after is None
    assert f"HTTP {status}" in str(err) and "webhook x" in str(err)


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 413, 415, 422, 451])
def test_other_4xx_are_permanent(status: int) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        check_response(answer(status, text='{"error": "bad reading"}'), "webhook x")
    err = caught.value
    assert not err.retryable and err.status == status
    assert err.body == '{"error": "bad reading"}'
    assert not isinstance(err, RetryableDeliveryError)


def test_error_body_is_kept_but_bounded() -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        check_response(answer(400, text="x" * 10_000), "webhook x")
    assert caught.value.body == "x" * 4096


def test_retry_after_in_seconds() -> None:
    with pytest.raises(RetryableDeliveryError) as caught:
        check_response(answer(429, headers={"Retry-After": "7"}), "webhook x")
    assert caught.value.retry_after == 7.0
    with pytest.raises(RetryableDeliveryError) as caught:
        check_response(answer(503, headers={"Retry-After": " 120 "}), "webhook x")
    assert caught.value.retry_after == 120.0


def test_retry_after_as_http_date() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(RetryableDeliveryError) as caught:
        check_response(answer(503, headers={"Retry-After": later}), "webhook x")
    wait = caught.value.retry_after
    assert wait is not None and 27.0 <= wait <= 30.5
    # A date already past means "now", never a negative wait.
    earlier = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert retry_after(earlier) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3"])
def test_unusable_retry_after_is_ignored(value: str | None) -> None:
    assert retry_after(value) is None


def test_transport_failure_is_retryable_without_status() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:9/hook")
    for exc in (
        httpx.ConnectError("connection refused", request=request),
        httpx.ReadTimeout("timed out", request=request),
    ):
        err = transport_failure(exc, "webhook x")
        assert isinstance(err, RetryableDeliveryError) and isinstance(err, DeliveryError)
        assert err.status is None and err.retry_after is None
        assert "webhook x unreachable" in str(err) and type(exc).__name__ in str(err)
