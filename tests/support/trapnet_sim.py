"""A small simulated trap network: gateways, repeaters and nodes publishing as seed 000's did."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho

from tests.conftest import wait_until
from tests.support.mqtt_broker import acknowledged, client


class TrapNetwork:
    """Publishes the network's messages at QoS 1 on a broker and waits for every PUBACK."""

    def __init__(self, port: int, prefix: str = "AKLC") -> None:
        self.port = port
        self.prefix = prefix
        self._mqtt: paho.Client | None = None
        self._sent: list[paho.MQTTMessageInfo] = []

    def __enter__(self) -> TrapNetwork:
        self._mqtt = client(self.port, "trapnet-sim")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._mqtt is not None:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()

    def publish(self, topic: str, payload: str | dict[str, Any]) -> None:
        assert self._mqtt is not None
        body = payload if isinstance(payload, str) else json.dumps(payload)
        self._sent.append(self._mqtt.publish(topic, body, qos=1))

    def gateway_status(self, gateway: str, *values: object) -> None:
        self.publish(f"{self.prefix}/Status", ",".join(map(str, (gateway, *values))))

    def relay(self, gateway: str, node: str, *values: object, via: tuple[str, ...] = ()) -> None:
        """A node's CSV data as its gateway publishes it, repeater ids after the node id."""
        line = ",".join(map(str, (gateway, node, *via, *values)))
        self.publish(f"{self.prefix}/Gateway/{gateway}", line)

    def relay_status(self, gateway: str, node: str, *values: object) -> None:
        self.publish(
            f"{self.prefix}/Gateway/{gateway}", ",".join(map(str, (gateway, node, "OK", *values)))
        )

    def network(self, device: str, status: dict[str, Any]) -> None:
        self.publish(f"{self.prefix}/Network/{device}", status)

    def team(self, team: str, node: str, values: dict[str, Any]) -> None:
        self.publish(f"{team}/data", {"NodeID": node, **values})

    def trap_event(self, node: str, event: str, state: str, **extra: Any) -> None:
        self.publish(
            "EnvironmentalServices/traps", {"NodeID": node, "Event": event, "State": state, **extra}
        )

    def wait_acknowledged(self) -> None:
        wait_until(lambda: all(acknowledged(info) for info in self._sent), "every PUBACK")
