"""POST /devices/{id}/efento: queue an Efento configuration downlink as `efento config` does;
POST /downlinks/{id}/cancel: give one up."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.codecs.efento import encode_config
from fieldbridge.efento_queue import queue_config
from fieldbridge.web.console.guard import refuse_unless_writer
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.audit import audit
from fieldbridge.web.security.principal import principal_of

EFENTO_KIND = "efento"
# The settings the form asks for by name; anything else goes in its "other settings" box.
COMMON = ("measurement_period_base", "measurement_period_factor", "transmission_interval")
REQUESTS = {"device_info": "device_info_request", "configuration": "configuration_request"}


def form_fields(form: FormData) -> dict[str, Any]:
    """The ProtoConfig fields a form names: the common numbers, the upload requests, and
    NAME=VALUE lines (VALUE is JSON when it parses, else text, as `efento config --set`).
    ValueError names what is wrong."""
    fields: dict[str, Any] = {}
    for name in COMMON:
        text = str(form.get(name, "")).strip()
        if text:
            try:
                fields[name] = int(text)
            except ValueError:
                raise ValueError(f"{name}: {text!r} is not a whole number") from None
    for key, field in REQUESTS.items():
        if form.get(f"request_{key}"):
            fields[field] = True
    for line in str(form.get("other", "")).splitlines():
        if not line.strip():
            continue
        name, sep, text = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{line.strip()!r}: write NAME=VALUE, e.g. ack_interval=3600")
        if name in fields:
            raise ValueError(f"{name}: given twice")
        try:
            fields[name] = json.loads(text)
        except ValueError:
            fields[name] = text.strip()
    if not fields:
        raise ValueError("nothing to send: set a value or ask for an upload")
    return fields


class EfentoForm:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/devices/{device_id:path}/efento", self.queue, methods=["POST"]),
            Route("/downlinks/{downlink_id:int}/cancel", self.cancel, methods=["POST"]),
        ]

    async def queue(self, request: Request) -> Response:
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        device = request.path_params["device_id"]
        store = self.ctx.store
        try:
            fields = form_fields(await request.form())
            payload = encode_config(fields)
        except ValueError as exc:
            return await self._answer(request, device, error=str(exc), status_code=422)
        downlink_id = await queue_config(store, device, payload, fields, "console")
        await audit(
            request,
            self.ctx.store,
            "downlink.queue",
            device,
            {"id": downlink_id, "fields": fields, "payload_hex": payload.hex()},
        )
        note = f"queued downlink {downlink_id} ({len(payload)} bytes); it leaves with the "
        note += "sensor's next confirmable message"
        return await self._answer(request, device, note=note)

    async def cancel(self, request: Request) -> Response:
        """Give up a downlink not yet confirmed, so it is never sent (again)."""
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        downlink_id: int = request.path_params["downlink_id"]
        store = self.ctx.store
        found = await store.get_downlink(downlink_id)
        reason = f"cancelled in the console by {principal_of(request).actor}"
        cancelled = await store.cancel_downlink(downlink_id, reason)
        if cancelled is None:
            error = f"downlink {downlink_id} is not waiting (confirmed, failed or unknown)"
            if found is None:
                return render(request, "notice.html", {"error": error}, 404)
            return await self._answer(request, found.device, error=error, status_code=409)
        await audit(request, self.ctx.store, "downlink.cancel", str(downlink_id))
        note = f"downlink {downlink_id} cancelled"
        return await self._answer(request, cancelled.device, note=note)

    async def _answer(
        self,
        request: Request,
        device: str,
        *,
        note: str | None = None,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        values = {
            "device_id": device,
            "downlinks": await self.ctx.store.pending_downlinks(device),
            "note": note,
            "error": error,
        }
        return render(request, "downlinks.html", values, status_code)
