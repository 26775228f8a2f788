"""Store URLs: parsing, and hiding every secret a URL can carry before it is printed."""

from __future__ import annotations

import pytest

from fieldbridge.errors import ConfigError
from fieldbridge.store.urls import MASK, mask_url, parse_store_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://fb:s3cret@db:5432/fb", f"postgresql://fb:{MASK}@db:5432/fb"),
        ("postgresql://fb@db/fb", "postgresql://fb@db/fb"),
        ("sqlite:///var/fieldbridge.db", "sqlite:///var/fieldbridge.db"),
        # A password written raw may hold '/', '#' or '@': the last '@' before '?' ends it.
        ("postgresql://fb:a/b#c@d@db/fb", f"postgresql://fb:{MASK}@db/fb"),
        (
            "postgresql://db/fb?sslmode=require&password=s3cret&sslpassword=s3cret",
            f"postgresql://db/fb?sslmode=require&password={MASK}&sslpassword={MASK}",
        ),
        (
            "https://h/hook?api_key=s3cret;access_token=s3cret&Auth=s3cret&page=2#s3cret=no",
            f"https://h/hook?api_key={MASK};access_token={MASK}&Auth={MASK}&page=2#s3cret=no",
        ),
        (
            "https://h/x?client_secret=s3cret&apikey=s3cret&pwd=s3cret&credentials=s3cret",
            f"https://h/x?client_secret={MASK}&apikey={MASK}&pwd={MASK}&credentials={MASK}",
        ),
        ("https://h/x?key=", "https://h/x?key="),  # nothing to hide
        # A libpq conninfo, and a URL that lost its scheme.
        ("host=db password=s3cret user=fb", f"host=db password={MASK} user=fb"),
        ("host=db password='s3 cret' user=fb", f"host=db password={MASK} user=fb"),
        ("fb:s3cret@db/fb?token=s3cret", f"fb:{MASK}@db/fb?token={MASK}"),
    ],
)
def test_mask_url_hides_every_secret(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "mysql://fb:s3cret@db/fb?token=s3cret",
        "fb:s3cret@db/fb?password=s3cret",
        "sqlite://fb:s3cret@relative?password=s3cret",
    ],
)
def test_a_refused_store_url_is_named_without_its_secrets(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_store_url(url)
    message = str(caught.value)
    assert message.startswith("store.url ")
    assert "s3cret" not in message and MASK in message
