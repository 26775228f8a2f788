"""MQTT topic filters: which are valid, and which topics a filter takes."""

from __future__ import annotations

from paho.mqtt.client import topic_matches_sub


def check_filter(topic: str) -> None:
    """Raise ValueError unless `topic` is a valid MQTT topic filter (incl. $share/ and $queue/)."""
    if not topic or "\x00" in topic:
        raise ValueError("a topic filter must be non-empty text without NUL")
    body = topic
    if topic.startswith("$share/"):
        _, group, *rest = topic.split("/", 2)
        if not group or not rest or not rest[0] or any(c in group for c in "+#"):
            raise ValueError(f"{topic!r}: a shared subscription is $share/<group>/<filter>")
        body = rest[0]
    elif topic.startswith("$queue/"):
        body = topic.removeprefix("$queue/")
        if not body:
            raise ValueError(f"{topic!r}: $queue/ needs a filter after it")
    levels = body.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"{topic!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"{topic!r}: '+' must be a whole level")


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` falls under `topic_filter` (paho's rules for + and #)."""
    return topic_matches_sub(topic_filter, topic)
