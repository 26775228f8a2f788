"""POST /devices/{id}/flags: the per-destination switches, as `fieldbridge devices set --flag`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.model import Device
from fieldbridge.store.devicechange import ChangeRefused, DeviceChange, change_device
from fieldbridge.web.console.guard import refuse_unless_writer
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.audit import audit

# The destinations a device may be sent to only when switched on (sinks' `flag` routes).
UPLOAD_FLAGS = {
    "upload_trapnz": "Upload to Trap.NZ",
    "upload_thingsboard": "Upload to ThingsBoard",
    "upload_influxdb": "Upload to InfluxDB",
    "upload_dunedb": "Upload to DUNE",
}


@dataclass(frozen=True)
class FlagSwitch:
    name: str
    label: str
    on: bool


def flag_switches(device: Device) -> list[FlagSwitch]:
    """The four upload switches, then any other flag the device has."""
    switches = [
        FlagSwitch(n, label, device.flags.get(n, False)) for n, label in UPLOAD_FLAGS.items()
    ]
    others = sorted(set(device.flags) - set(UPLOAD_FLAGS))
    return switches + [FlagSwitch(n, n, device.flags[n]) for n in others]


class DeviceFlags:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [Route("/devices/{device_id:path}/flags", self.set_flag, methods=["POST"])]

    async def set_flag(self, request: Request) -> Response:
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        device_id = request.path_params["device_id"]
        form = await request.form()
        name = str(form.get("flag", "")).strip()
        value = str(form.get("on", "")).lower()
        if not name or value not in ("true", "false"):
            return render(
                request, "notice.html", {"error": "give flag=NAME and on=true|false"}, 400
            )
        on = value == "true"
        try:
            device = await change_device(self.ctx.store, device_id, DeviceChange(flags={name: on}))
        except ChangeRefused as exc:
            return render(request, "notice.html", {"error": str(exc)}, 422)
        if device is None:
            return render(request, "notice.html", {"error": f"no device {device_id}"}, 404)
        await audit(request, self.ctx.store, "device.update", device_id, {"flags": {name: on}})
        switch = next(s for s in flag_switches(device) if s.name == name)
        return render(request, "flag.html", {"device": device, "flag": switch})
