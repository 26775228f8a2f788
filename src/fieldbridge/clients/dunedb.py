"""A client of the DUNE hardware database API (seed 004's M2M operations), async and sync.

One token (Auth0 client credentials) and one connection pool serve every call. Errors are
typed: PermissionDenied (403, with the server's message), NotFound (404, or a `null` record),
ApiError (anything else, with the status and the server's `error`), AuthError (no token),
ValueError (an argument the API would refuse, named before any call).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from fieldbridge import __version__
from fieldbridge.clients import short_uuid
from fieldbridge.clients.oauth import Grant, OAuthBearer, OAuthClient, TokenKeeper
from fieldbridge.errors import ApiError, NotFound, PermissionDenied

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

T = TypeVar("T")

AUDIENCE = "https://apa.dunedb.org/api/"
SEED_LOCAL = "localhost:12313"  # the seed's one plain-HTTP host: a DB on the developer's machine
ACTION_ID = re.compile(r"[0-9a-f]{24}")
NO_COMPONENT = "There is no component record"  # the later server's 404 for a short UUID

ComponentRef = uuid.UUID | str  # a full UUID, or its short form (20 to 22 characters)


class DuneEnvironment(BaseModel):
    """[dunedb.environments.<name>]: one DB instance (development, staging, production...)."""

    model_config = ConfigDict(extra="forbid")

    auth0_domain: str = Field(min_length=1)  # the Auth0 tenant host, or a full URL
    db_domain: str = Field(min_length=1)  # the DB API host[:port], or a full URL
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    audience: str = AUDIENCE
    timeout: float = Field(default=60.0, gt=0)  # seconds for each call's connect, read, write
    verify_tls: bool = True

    def token_url(self) -> str:
        """https://<auth0_domain>/oauth/token; a full URL is taken as the tenant's base."""
        base = self.auth0_domain.rstrip("/")
        if "://" not in base:
            base = f"https://{base}"
        return base if base.endswith("/oauth/token") else f"{base}/oauth/token"

    def api_url(self) -> str:
        """https://<db_domain>/api (plain HTTP for the seed's localhost:12313); a full URL is
        taken as the DB's base."""
        base = self.db_domain.rstrip("/")
        if "://" not in base:
            base = f"{'http' if base == SEED_LOCAL else 'https'}://{base}"
        return base if base.endswith("/api") else f"{base}/api"


@dataclass(frozen=True, slots=True)
class Component:
    """A component record (the newest version), and the whole record as the DB sent it."""

    uuid: uuid.UUID
    short_uuid: str
    form_id: str
    form_name: str | None
    data: Mapping[str, Any]
    version: int | None
    record: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Action:
    """An action record (the newest version), and the whole record as the DB sent it."""

    id: str
    form_id: str
    form_name: str | None
    component_uuid: uuid.UUID
    data: Mapping[str, Any]
    version: int | None
    record: Mapping[str, Any]


def full_uuid(value: ComponentRef) -> uuid.UUID | None:
    """`value` as a full UUID, or None if it is not one (then it may be a short UUID)."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None


def check_action_id(action_id: str) -> str:
    if not ACTION_ID.fullmatch(action_id):
        raise ValueError(f"action id {action_id[:40]!r} must be 24 lower-case hex digits")
    return action_id


class AsyncDuneDB:
    """`async with AsyncDuneDB(environment) as db:` then `await db.perform_action(...)`.

    `keeper`/`key`: where the token is kept between runs (a sink keeps it in the store);
    `transport`/`token_transport` replace httpx's network transports (tests, proxies).
    """

    def __init__(
        self,
        environment: DuneEnvironment,
        *,
        name: str = "DUNE DB",
        timeout: float | None = None,
        keeper: TokenKeeper | None = None,
        key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        token_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.environment = environment
        self.name = name
        self.timeout = timeout or environment.timeout
        self.auth = OAuthBearer(
            OAuthClient(
                token_url=environment.token_url(),
                client_id=environment.client_id,
                client_secret=environment.client_secret,
                grant=Grant.CLIENT_CREDENTIALS,
                audience=environment.audience,
                json_request=True,
                timeout=self.timeout,
                verify_tls=environment.verify_tls,
            ),
            name=name,
            keeper=keeper,
            key=key,
            transport=token_transport,
        )
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> AsyncDuneDB:
        env = self.environment
        self._client = httpx.AsyncClient(
            base_url=env.api_url(),
            auth=self.auth,
            timeout=self.timeout,
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"fieldbridge/{__version__}",
            },
            transport=self._transport or httpx.AsyncHTTPTransport(verify=env.verify_tls),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.auth.aclose()

    # --- the operations ----------------------------------------------------------------------

    async def convert_short_uuid(self, short: str) -> uuid.UUID:
        """The full UUID of the component a short UUID names.

        Asks /confirmShortUUID (which tries base 58, then base 57, and checks the component
        exists); a server without it gets /convertShortUUID (base 58) and the same check done
        here: the base-58 reading if that component exists, else the base-57 one if it does.
        """
        if not short_uuid.ROUTE.fullmatch(short):
            raise ValueError(
                f"short UUID {short[:40]!r} must be 20 to 22 characters of the base-58 alphabet"
            )
        try:
            return _uuid(await self._call("GET", f"/confirmShortUUID/{short}"), "confirmShortUUID")
        except NotFound as exc:
            if NO_COMPONENT in exc.detail:
                raise
        converted = _uuid(await self._call("GET", f"/convertShortUUID/{short}"), "convert")
        try:
            await self.get_component(converted)
            return converted
        except NotFound:
            pass
        except PermissionDenied:
            return converted  # cannot look: the DB's own reading, as the 2022 client had it
        try:
            other = short_uuid.decode(short, short_uuid.BASE57)
        except ValueError:
            other = None
        if other is not None:
            try:
                await self.get_component(other)
                return other
            except NotFound:
                pass
        raise NotFound(
            f"{self.name}: no component has short UUID {short} (read in base 58 as {converted})",
            status=404,
            detail=f"{NO_COMPONENT} with component UUID = {converted}",
        )

    async def component_uuid(self, ref: ComponentRef) -> uuid.UUID:
        """A full UUID as given, or a short one converted by the DB."""
        full = full_uuid(ref)
        return full if full is not None else await self.convert_short_uuid(str(ref).strip())

    async def new_component_uuid(self) -> uuid.UUID:
        return _uuid(await self._call("GET", "/newComponentUUID"), "newComponentUUID")

    async def get_component(self, ref: ComponentRef) -> Component:
        """The newest version of a component; NotFound if the DB has none."""
        component = await self.component_uuid(ref)
        record = await self._call("GET", f"/component/{component}")
        if record is None:
            raise NotFound(f"{self.name}: no component {component}", status=200, detail="null")
        return _component(record)

    async def create_component(self, form_id: str, data: Mapping[str, Any]) -> uuid.UUID:
        """Create a component of a type form with these data fields; its new UUID."""
        component = await self.new_component_uuid()
        body = {"componentUuid": str(component), "formId": form_id, "data": _submitted(data)}
        return _uuid(await self._call("POST", "/component", body), "component")

    async def edit_component(self, ref: ComponentRef, changes: Mapping[str, Any]) -> uuid.UUID:
        """Set data fields of a component (the DB keeps the old version); its UUID."""
        current = await self.get_component(ref)
        record = dict(current.record)
        record["data"] = {**current.data, **changes}
        return _uuid(await self._call("POST", "/component", record), "component")

    async def perform_action(self, form_id: str, ref: ComponentRef, data: Mapping[str, Any]) -> str:
        """Perform an action of a type form on a component; the new action's id."""
        component = await self.component_uuid(ref)
        body = {"typeFormId": form_id, "componentUuid": str(component), "data": _submitted(data)}
        return _action_id(await self._call("POST", "/action", body))

    async def get_action(self, action_id: str) -> Action:
        """The newest version of an action; NotFound if the DB has none."""
        record = await self._call("GET", f"/action/{check_action_id(action_id)}")
        if record is None:
            raise NotFound(f"{self.name}: no action {action_id}", status=200, detail="null")
        return _action(record)

    async def edit_action(self, action_id: str, changes: Mapping[str, Any]) -> str:
        """Set data fields of an action (the DB keeps the old version); its id."""
        current = await self.get_action(action_id)
        record = dict(current.record)
        record["data"] = {**current.data, **changes}
        return _action_id(await self._call("POST", "/action", record))

    # --- the wire ----------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._client is None:
            raise RuntimeError(f"{self.name}: use the client inside `async with`")
        where = f"{self.name} {method} {self.environment.api_url()}{path}"
        try:
            response = await self._client.request(method, path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiError(f"{where}: unreachable ({type(exc).__name__}: {exc})") from None
        except httpx.TimeoutException as exc:
            raise ApiError(
                f"{where}: no answer within {self.timeout:g} s ({type(exc).__name__})",
                unanswered=True,
            ) from None
        except httpx.TransportError as exc:
            raise ApiError(
                f"{where}: the connection failed ({type(exc).__name__}: {exc})", unanswered=True
            ) from None
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError:
                raise ApiError(f"{where}: HTTP 200 without JSON", status=200) from None
        detail = _server_message(response)
        kind = PermissionDenied if status == 403 else NotFound if status == 404 else ApiError
        raise kind(f"{where}: HTTP {status}: {detail}", status=status, detail=detail)


class DuneDB:
    """The same operations, blocking: `with DuneDB(environment) as db: db.perform_action(...)`.

    The async client runs on an event loop of its own thread (an anyio blocking portal), so
    one token and one connection pool serve every call, as in AsyncDuneDB.
    """

    def __init__(self, environment: DuneEnvironment, **options: Any) -> None:
        self._db = AsyncDuneDB(environment, **options)
        self._portal_cm: Any = None
        self._portal: BlockingPortal | None = None

    def __enter__(self) -> DuneDB:
        from anyio.from_thread import start_blocking_portal

        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._run(self._db.__aenter__)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._run(functools.partial(self._db.__aexit__, None, None, None))
        finally:
            self._portal_cm.__exit__(exc_type, exc, tb)
            self._portal = None

    def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._portal is None:
            raise RuntimeError("use the client inside `with`")
        return self._portal.call(call)

    def convert_short_uuid(self, short: str) -> uuid.UUID:
        return self._run(functools.partial(self._db.convert_short_uuid, short))

    def new_component_uuid(self) -> uuid.UUID:
        return self._run(self._db.new_component_uuid)

    def get_component(self, ref: ComponentRef) -> Component:
        return self._run(functools.partial(self._db.get_component, ref))

    def create_component(self, form_id: str, data: Mapping[str, Any]) -> uuid.UUID:
        return self._run(functools.partial(self._db.create_component, form_id, data))

    def edit_component(self, ref: ComponentRef, changes: Mapping[str, Any]) -> uuid.UUID:
        return self._run(functools.partial(self._db.edit_component, ref, changes))

    def perform_action(self, form_id: str, ref: ComponentRef, data: Mapping[str, Any]) -> str:
        return self._run(functools.partial(self._db.perform_action, form_id, ref, data))

    def get_action(self, action_id: str) -> Action:
        return self._run(functools.partial(self._db.get_action, action_id))

    def edit_action(self, action_id: str, changes: Mapping[str, Any]) -> str:
        return self._run(functools.partial(self._db.edit_action, action_id, changes))


def _submitted(data: Mapping[str, Any]) -> dict[str, Any]:
    """Type-form data as the web form submits it (the seed adds submit: true)."""
    return {**data, "submit": True}


def _uuid(value: Any, what: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ApiError(f"DUNE DB {what}: expected a UUID string, got {str(value)[:80]!r}", status=200)


def _action_id(value: Any) -> str:
    if isinstance(value, str) and ACTION_ID.fullmatch(value):
        return value
    raise ApiError(f"DUNE DB action: expected an action id, got {str(value)[:80]!r}", status=200)


def _version(record: Mapping[str, Any]) -> int | None:
    validity = record.get("validity")
    version = validity.get("version") if isinstance(validity, dict) else None
    return version if isinstance(version, int) else None


def _component(record: Any) -> Component:
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
        raise ApiError("DUNE DB component: the record is not an object with data", status=200)
    component = _uuid(record.get("componentUuid"), "component record")
    return Component(
        uuid=component,
        short_uuid=str(record.get("shortUuid") or short_uuid.encode(component)),
        form_id=str(record.get("formId", "")),
        form_name=record.get("formName"),
        data=record["data"],
        version=_version(record),
        record=record,
    )


def _action(record: Any) -> Action:
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
        raise ApiError("DUNE DB action: the record is not an object with data", status=200)
    return Action(
        id=_action_id(record.get("actionId")),
        form_id=str(record.get("typeFormId", "")),
        form_name=record.get("typeFormName"),
        component_uuid=_uuid(record.get("componentUuid"), "action record"),
        data=record["data"],
        version=_version(record),
        record=record,
    )


def _server_message(response: httpx.Response) -> str:
    """The server's own words: the `error` of a JSON answer, else the text (cut short)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:2000]
    return response.text.strip()[:2000] or response.reason_phrase
