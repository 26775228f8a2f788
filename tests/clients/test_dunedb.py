"""The DUNE DB client against the fake DB and Auth0: the seed's operations, errors, short UUIDs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldbridge.clients import short_uuid
from fieldbridge.clients.dunedb import AsyncDuneDB, DuneDB, DuneEnvironment
from fieldbridge.config import load_settings
from fieldbridge.errors import ApiError, AuthError, ConfigError, NotFound, PermissionDenied
from tests.fakes.dunedb import AUDIENCE, DuneDBServer

# integrations.md §2.4, checked there against short-uuid's README and Python's shortuuid.
WORKED = uuid.UUID("a44521d0-0fb8-4ade-8002-3385545c3318")
LEADING_ZEROS = uuid.UUID("00000000-a70c-4ebd-8f2b-540f7e709092")


def environment(dune: DuneDBServer, **overrides: Any) -> DuneEnvironment:
    values: dict[str, Any] = {
        "auth0_domain": dune.url,
        "db_domain": dune.url,
        "client_id": dune.client_id,
        "client_secret": dune.client_secret,
        "timeout": 5.0,
    }
    values.update(overrides)
    return DuneEnvironment(**values)


@pytest.fixture
async def dune() -> AsyncIterator[DuneDBServer]:
    async with DuneDBServer() as server:
        yield server
    assert server.violations == [], "the client broke the DUNE DB contract"


# --- short UUIDs ------------------------------------------------------------------------------


def test_the_worked_examples_of_spec_2_4() -> None:
    assert short_uuid.encode(WORKED) == "mhvXdrZT4jP5T8vBxuvm75"
    assert short_uuid.decode("mhvXdrZT4jP5T8vBxuvm75") == WORKED
    assert short_uuid.encode(WORKED, short_uuid.BASE57) == "XEwtRSkHwjH6oR3gv54ds9"
    assert short_uuid.decode("XEwtRSkHwjH6oR3gv54ds9", short_uuid.BASE57) == WORKED
    assert short_uuid.encode(LEADING_ZEROS) == "1111149Qtz9t69fgN7CpYE"
    assert short_uuid.decode("1111149Qtz9t69fgN7CpYE") == LEADING_ZEROS
    assert short_uuid.decode("49Qtz9t69fgN7CpYE") == LEADING_ZEROS  # unpadded, 17 characters
    assert short_uuid.decode("mhvXdrZT4jP5T8vBxuvm75", short_uuid.BASE57) == uuid.UUID(
        "f59dd75b-f18e-72fb-be27-4a99e148748d"
    )


@pytest.mark.parametrize(
    ("short", "problem"),
    [("mhvXdrZT4jP5T8vBxuvm750", "1 to 22"), ("mhvXdrZT4jP5T8vBxuvm7O", "'O' at position 21")],
)
def test_a_bad_short_uuid_is_named(short: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        short_uuid.decode(short)


def test_every_uuid_round_trips_in_both_alphabets() -> None:
    for _ in range(500):
        value = uuid.uuid4()
        for alphabet in (short_uuid.FLICKR_BASE58, short_uuid.BASE57):
            short = short_uuid.encode(value, alphabet)
            assert len(short) == 22 and short_uuid.decode(short, alphabet) == value


# --- settings ----------------------------------------------------------------------------------


def test_urls_follow_the_seed() -> None:
    env = DuneEnvironment(
        auth0_domain="dev-xyz.auth0.com",
        db_domain="db.example.org",
        client_id="c",
        client_secret="s",
    )
    assert env.token_url() == "https://dev-xyz.auth0.com/oauth/token"
    assert env.api_url() == "https://db.example.org/api"
    local = env.model_copy(update={"db_domain": "localhost:12313"})
    assert local.api_url() == "http://localhost:12313/api"  # the seed's one plain-HTTP host
    full = env.model_copy(update={"auth0_domain": "http://127.0.0.1:9/", "db_domain": "http://h:1"})
    assert (full.token_url(), full.api_url()) == (
        "http://127.0.0.1:9/oauth/token",
        "http://h:1/api",
    )


def test_environments_come_from_toml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fb.toml"
    path.write_text(
        "[dunedb.environments.development]\n"
        'auth0_domain = "dev-xyz.auth0.com"\n'
        'db_domain = "db.example.org"\n'
        'client_id = "abc"\n'
        'client_secret = "from-the-file"\n'
    )
    monkeypatch.setenv("FIELDBRIDGE_DUNEDB__ENVIRONMENTS__DEVELOPMENT__CLIENT_SECRET", "from-env")
    settings = load_settings(path)
    env = settings.dune_environment("development")
    assert env.client_secret.get_secret_value() == "from-env"
    assert (env.client_id, env.audience) == ("abc", AUDIENCE)
    assert "from-env" not in str(settings.public_dict())
    with pytest.raises(ConfigError, match=r"dunedb.environments.production: .*known: development"):
        settings.dune_environment("production")


# --- the operations ----------------------------------------------------------------------------


async def test_the_token_reply_keeps_auth0_key_order_for_the_seed_client(
    dune: DuneDBServer,
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{dune.url}/oauth/token",
            json={
                "client_id": dune.client_id,
                "client_secret": dune.client_secret,
                "audience": AUDIENCE,
                "grant_type": "client_credentials",
            },
        )
    parts = response.text.split('"')  # the seed's own parsing (m2m/common.py ConnectToAPI)
    assert parts[3] == dune.tokens[0] and parts[13] == "Bearer"
    assert list(response.json()) == ["access_token", "scope", "expires_in", "token_type"]


async def test_the_seed_templates_through_the_async_client(dune: DuneDBServer) -> None:
    async with AsyncDuneDB(environment(dune)) as db:
        # template_createComponent.py
        created = await db.create_component(
            "basic_component",
            {
                "name": "New M2M Component",
                "textField": "This is a component created through the M2M application",
            },
        )
        assert created.version == 1
        component = await db.get_component(created)
        assert component.version == 1 and component.form_name == "Basic Component"
        assert component.data["submit"] is True
        assert component.record["insertion"]["user"] == {
            "user_id": dune.client_id,
            "displayName": "M2M Client",
            "emails": ["none"],
        }
        # template_editComponent.py
        edited = await db.edit_component(
            created, {"textField": "This component has been edited through the M2M application"}
        )
        assert edited == created
        again = await db.get_component(component.short_uuid)  # a short UUID works too
        assert again.version == 2 and again.data["name"] == "New M2M Component"
        assert again.data["textField"].startswith("This component has been edited")
        assert again.record["validity"]["ancestor_id"] == component.record["_id"]
        # template_performAction.py
        action_id = await db.perform_action(
            "my_action",
            created,
            {"name": "M2M Action", "actionPerformedAfterFormsCleanup": True, "measurement": 12.04},
        )
        action = await db.get_action(action_id)
        assert (action.form_id, action.component_uuid, action.version) == ("my_action", created, 1)
        assert action.data["measurement"] == 12.04
        # template_editAction.py
        assert (
            await db.edit_action(
                action_id, {"actionName": "M2M Action (edited)", "measurement": 19.07}
            )
            == action_id
        )
        edited_action = await db.get_action(action_id)
        assert edited_action.version == 2 and edited_action.data["measurement"] == 19.07
        assert edited_action.data["name"] == "M2M Action"
    assert dune.counts["granted"] == 1, "one token for every call"
    assert len(dune.actions[action_id]) == 2 and len(dune.components[str(created)]) == 2


async def test_the_seed_templates_through_the_sync_client(dune: DuneDBServer) -> None:
    def templates() -> tuple[uuid.UUID, str]:
        with DuneDB(environment(dune)) as db:
            created = db.create_component("basic_component", {"name": "Sync"})
            db.edit_component(created, {"textField": "edited"})
            action_id = db.perform_action("my_action", created, {"measurement": 1.5})
            db.edit_action(action_id, {"measurement": 2.5})
            assert db.get_component(created).data["textField"] == "edited"
            assert db.get_action(action_id).data["measurement"] == 2.5
            assert db.convert_short_uuid(short_uuid.encode(created)) == created
            return created, action_id

    created, action_id = await asyncio.to_thread(templates)
    assert dune.component(str(created))["validity"]["version"] == 2  # type: ignore[index]
    assert dune.action(action_id)["validity"]["version"] == 2  # type: ignore[index]
    assert dune.counts["granted"] == 1


async def test_errors_are_typed_with_the_servers_message(dune: DuneDBServer) -> None:
    async with AsyncDuneDB(environment(dune)) as db:
        with pytest.raises(NotFound) as missing:
            await db.get_component(uuid.uuid4())
        assert missing.value.detail == "null"
        with pytest.raises(NotFound):
            await db.get_action("0123456789abcdef01234567")
        with pytest.raises(NotFound):
            await db.edit_action("0123456789abcdef01234567", {"x": 1})
        with pytest.raises(ApiError) as refused:
            await db.create_component("no_such_form", {})
        assert refused.value.status == 500
        assert refused.value.detail == (
            "Error: Component::save() - unknown component type form ID no_such_form"
        )
        with pytest.raises(ValueError, match="24 lower-case hex"):
            await db.get_action("not-an-id")
        with pytest.raises(ValueError, match="20 to 22"):
            await db.convert_short_uuid("tooShort")


async def test_a_missing_permission_is_denied_with_the_servers_words() -> None:
    dune = DuneDBServer(permissions=("components:view", "actions:view"))
    async with dune, AsyncDuneDB(environment(dune)) as db:
        component = uuid.uuid4()
        dune.add_component(component)
        with pytest.raises(PermissionDenied) as denied:
            await db.perform_action("my_action", component, {"measurement": 1})
    assert denied.value.status == 403
    assert denied.value.detail == (
        "Incorrect permissions - you need actions:perform, but have components:view, actions:view"
    )


async def test_bad_credentials_are_an_auth_error() -> None:
    dune = DuneDBServer()
    async with dune, AsyncDuneDB(environment(dune, client_secret="wrong")) as db:
        with pytest.raises(AuthError) as refused:
            await db.new_component_uuid()
    assert refused.value.refused and refused.value.status == 401
    assert "access_denied: Unauthorized" in str(refused.value)


@pytest.mark.parametrize("confirm", [True, False], ids=["2024-server", "2022-server"])
async def test_short_uuids_resolve_in_base_58_then_57(confirm: bool) -> None:
    async with DuneDBServer(confirm=confirm) as dune:
        in58, in57 = uuid.uuid4(), uuid.uuid4()
        dune.add_component(in58)
        dune.add_component(in57)
        async with AsyncDuneDB(environment(dune)) as db:
            assert await db.convert_short_uuid(short_uuid.encode(in58)) == in58
            assert await db.convert_short_uuid(short_uuid.encode(in57, short_uuid.BASE57)) == in57
            nowhere = short_uuid.encode(uuid.uuid4())
            with pytest.raises(NotFound) as missing:
                await db.convert_short_uuid(nowhere)
        assert "There is no component record with component UUID = " in missing.value.detail
        used = {r.path.split("/")[2] for r in dune.requests if r.path.startswith("/api/con")}
        assert used == (
            {"confirmShortUUID"} if confirm else {"confirmShortUUID", "convertShortUUID"}
        )
        assert dune.violations == []


async def test_the_fake_checks_what_the_dune_db_checks() -> None:
    """The fake refuses what §2.3/§2.5 say the real server refuses."""
    viewer = ("components:view",)
    async with DuneDBServer() as dune, httpx.AsyncClient(base_url=dune.url, timeout=5) as client:
        creds = {
            "client_id": dune.client_id,
            "client_secret": dune.client_secret,
            "audience": AUDIENCE,
            "grant_type": "client_credentials",
        }
        as_form = await client.post("/oauth/token", data=creds)
        assert as_form.status_code == 415 and "not JSON" in dune.violations.pop()
        wrong = await client.post("/oauth/token", json={**creds, "client_secret": "x"})
        assert (wrong.status_code, wrong.json()) == (
            401,
            {"error": "access_denied", "error_description": "Unauthorized"},
        )
        elsewhere = await client.post("/oauth/token", json={**creds, "audience": "https://x/"})
        assert elsewhere.status_code == 403 and "audience" in dune.violations.pop()
        token = (await client.post("/oauth/token", json=creds)).json()["access_token"]
        full = {"authorization": f"Bearer {token}"}
        view = {"authorization": f"Bearer {dune.token_for(viewer)}"}

        missing = await client.get("/api/newComponentUUID")
        assert missing.status_code == 500 and "without an authorization" in dune.violations.pop()
        not_bearer = await client.get("/api/newComponentUUID", headers={"authorization": token})
        assert (not_bearer.status_code, not_bearer.text) == (401, "JWT token required")
        dune.violations.pop()

        made = await client.get("/api/newComponentUUID", headers=full)
        assert uuid.UUID(made.json()).version == 1
        component = str(uuid.uuid4())
        body = {"componentUuid": component, "formId": "basic_component", "data": {"a": 1}}
        denied = await client.post("/api/component", json=body, headers=view)
        assert (denied.status_code, denied.json()) == (
            403,
            {"error": "Incorrect permissions - you need components:edit, but have components:view"},
        )
        for broken, why in (
            ({**body, "formId": "nope"}, "unknown component type form ID nope"),
            ({"formId": "basic_component", "data": {}}, "the input has no 'componentUuid'"),
        ):
            refused = await client.post("/api/component", json=broken, headers=full)
            assert refused.status_code == 500 and refused.json()["error"].startswith("Error: ")
            assert why in refused.json()["error"]
        unknown = await client.post("/api/components", headers=full)
        assert unknown.status_code == 404 and "Cannot POST" in unknown.text
        assert (await client.post("/json/component", json=body, headers=full)).json() == component
        record = (await client.get(f"/api/component/{component}", headers=view)).json()
        again = await client.post("/api/component", json={**record, "data": {"a": 2}}, headers=full)
        assert again.json() == component
        newest = (await client.get(f"/json/component/{component}", headers=full)).json()
        assert newest["validity"]["version"] == 2 and newest["data"] == {"a": 2}
        assert newest["validity"]["ancestor_id"] == record["_id"]
        assert newest["shortUuid"] == short_uuid.encode(uuid.UUID(component))
        nothing = await client.get(f"/api/component/{uuid.uuid4()}", headers=full)
        assert (nothing.status_code, nothing.text) == (200, "null")
        assert (await client.get(f"/api/action/{'0' * 24}", headers=full)).text == "null"
        for path in (
            "/api/component/not-a-uuid",
            "/api/action/0123",
            "/api/convertShortUUID/short",
            f"/api/confirmShortUUID/{'0' * 22}",
        ):
            answer = await client.get(path, headers=full)
            assert answer.status_code == 404 and "Cannot GET" in answer.text, path
        action = {"typeFormId": "my_action", "componentUuid": component, "data": {"m": 1}}
        assert (await client.post("/api/action", json=action, headers=view)).status_code == 403
        action_id = (await client.post("/api/action", json=action, headers=full)).json()
        assert short_uuid.ROUTE.fullmatch(short_uuid.encode(uuid.UUID(component)))
        assert len(action_id) == 24
        got = (await client.get(f"/api/action/{action_id}", headers=full)).json()
        assert got["insertion"]["user"]["user_id"] == dune.client_id
        assert dune.violations == []
