"""ThingsBoard's MQTT connection: the device token as username, CONNACK 4/5 as a bad token."""

from __future__ import annotations

import ssl

from paho.mqtt.reasoncodes import ReasonCode

from fieldbridge.sinks.mqtt_connection import MAX_INFLIGHT, MessageHandler, MqttConnection

__all__ = ["MAX_INFLIGHT", "TbConnection", "TokenRefused"]

# paho 2 turns an MQTT 3.1.1 CONNACK code into a reason code: 134 = 4 (bad user name or
# password, ThingsBoard's answer to an empty token), 135 = 5 (not authorised: unknown token).
BAD_TOKEN = {134: 4, 135: 5}


class TokenRefused(Exception):
    """ThingsBoard answered CONNECT with CONNACK 4 or 5: the token is wrong."""

    def __init__(self, code: int) -> None:
        super().__init__(f"CONNACK {code}")
        self.code = code


class TbConnection(MqttConnection):
    """A connection with one token as the MQTT username (the password stays empty)."""

    broker = "ThingsBoard"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        token: str,
        client_id: str,
        timeout: float,
        what: str,
        on_message: MessageHandler | None = None,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            tls=tls,
            client_id=client_id,
            timeout=timeout,
            what=what,
            username=token,
            password="",
            on_message=on_message,
        )

    def refused(self, reason: ReasonCode) -> Exception:
        if reason.value in BAD_TOKEN:
            return TokenRefused(BAD_TOKEN[reason.value])
        return super().refused(reason)
