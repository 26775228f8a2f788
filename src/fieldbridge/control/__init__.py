"""Remote control over MQTT ([control]): the MQTT-Handler's commands and a few of ours."""

from fieldbridge.control.remote import ControlContext, RemoteControl
from fieldbridge.control.settings import ControlSettings

__all__ = ["ControlContext", "ControlSettings", "RemoteControl"]
