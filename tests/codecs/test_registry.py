"""The codec registry: names, options, and the errors a user sees."""

from __future__ import annotations

import pytest

from fieldbridge.codecs import CODECS, build_codec, http_json
from fieldbridge.errors import ConfigError


def test_known_codec_builds() -> None:
    assert build_codec("http-json", {}, setting="sources.x.codec") is http_json.decode


def test_unknown_codec_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"sources\.x\.codec: unknown codec 'nope' \(known: "):
        build_codec("nope", {}, setting="sources.x.codec")


def test_options_to_a_codec_without_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="takes no options, got colour"):
        build_codec("http-json", {"colour": 1}, setting="sources.x.codec")


def test_every_registered_codec_builds_with_no_options_or_says_why() -> None:
    for name in CODECS:
        try:
            build_codec(name, {}, setting="s")
        except ConfigError as exc:
            assert name in str(exc)
