"""Settings: one TOML file plus FIELDBRIDGE_<SECTION>__<KEY> environment overrides."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from fieldbridge.clients.dunedb import DuneEnvironment
from fieldbridge.control.settings import ControlSettings
from fieldbridge.errors import ConfigError
from fieldbridge.plugin import (
    SINK_TYPES,
    SOURCE_TYPES,
    SinkSettings,
    SourceSettings,
    load_builtins,
)
from fieldbridge.store.urls import mask_url, parse_store_url

CONFIG_ENV = "FIELDBRIDGE_CONFIG"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(Section):
    url: str = "sqlite:///var/fieldbridge.db"
    synchronous: Literal["off", "normal", "full", "extra"] = "full"
    retention_days: float = Field(default=30.0, gt=0)
    readings_retention_days: float = Field(default=0.0, ge=0)  # 0 keeps readings forever
    busy_timeout_ms: int = Field(default=5000, ge=0)
    # Deadlines (docs/operations.md, "Deadlines"): a store that does not answer within them
    # is a failed store; devices are told to retry.
    commit_timeout_s: float = Field(default=10.0, gt=0)
    maintenance_timeout_s: float = Field(default=600.0, gt=0)
    migrate_timeout_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: int = Field(default=5, ge=2)  # libpq rounds 1 up to 2
    statement_timeout_ms: int = Field(default=0, ge=0)  # 0: the server's own setting
    keepalive_idle_s: int = Field(default=10, ge=0)  # 0: no TCP keepalive
    keepalive_interval_s: int = Field(default=5, ge=1)
    keepalive_count: int = Field(default=3, ge=1)
    tcp_user_timeout_ms: int = Field(default=30_000, ge=0)  # 0: the kernel's own

    @model_validator(mode="after")
    def _commit_outlasts_busy_timeout(self) -> StoreSettings:
        if parse_store_url(self.url).sqlite_path is None:
            return self
        if self.commit_timeout_s * 1000 <= self.busy_timeout_ms:
            raise ValueError(
                f"store.commit_timeout_s ({self.commit_timeout_s:g} s) must be longer than "
                f"store.busy_timeout_ms ({self.busy_timeout_ms} ms): a commit waits up to "
                "busy_timeout_ms for another program's write lock, and must not be given up "
                "before that; raise commit_timeout_s or lower busy_timeout_ms"
            )
        return self

    def libpq_params(self) -> dict[str, str]:
        """PostgreSQL connection keywords these settings stand for (a key the store URL sets
        itself is left to the URL)."""
        params = {
            "connect_timeout": str(self.connect_timeout_s),
            "keepalives": "1" if self.keepalive_idle_s else "0",
        }
        if self.keepalive_idle_s:
            params["keepalives_idle"] = str(self.keepalive_idle_s)
            params["keepalives_interval"] = str(self.keepalive_interval_s)
            params["keepalives_count"] = str(self.keepalive_count)
        if self.tcp_user_timeout_ms:
            params["tcp_user_timeout"] = str(self.tcp_user_timeout_ms)
        if self.statement_timeout_ms:
            params["options"] = f"-c statement_timeout={self.statement_timeout_ms}"
        return params

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        try:
            parse_store_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("store.url ")) from None
        return url


# [http] keys that are the short form of one [[sources.http]] (how HTTP ingest was configured
# before it was a registered source); unset unless given, so both forms cannot be mixed.
HTTP_SHORT_FORM = {
    "ingest": "remove it (the [[sources.http]] entries are the HTTP sources)",
    "source_name": "set `name` in [[sources.http]] instead",
    "max_body_bytes": "set `max_body_bytes` in [[sources.http]] instead",
}


class HttpSettings(Section):
    """The HTTP server: /healthz, /metrics, the spy, and the endpoints of HTTP sources."""

    enabled: bool = True
    listen: str = Field(default="127.0.0.1:8080", pattern=r"^.+:\d{1,5}$")
    ingest: bool | None = None  # unset: true
    source_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")  # unset: "http"
    max_body_bytes: int | None = Field(default=None, ge=1)  # unset: 1048576
    tokens: list[str] = Field(default_factory=list)  # bearer tokens; empty = no auth
    header_timeout_s: float = Field(default=10.0, ge=0)  # 0: no deadline
    body_timeout_s: float = Field(default=30.0, ge=0)  # 0: no deadline
    max_connections: int = Field(default=512, ge=1, le=1_000_000)
    # The console and the REST API (docs/security.md).
    tls_cert: str | None = None  # PEM certificate (chain) file: serve HTTPS
    tls_key: str | None = None  # its private key file
    secure_cookies: bool | None = None  # unset: only with TLS; set true behind a TLS proxy
    session_max_age_s: int = Field(default=43_200, ge=60, le=2_592_000)
    login_max_failures: int = Field(default=5, ge=1, le=1000)  # per user name and per address
    login_window_s: float = Field(default=300.0, ge=1)
    metrics_public: bool = True  # false: /metrics needs a login or an API token

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("http.tls_cert and http.tls_key go together: set both or neither")
        for key in ("tls_cert", "tls_key"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"http.{key} {path}: no such file")
        return self

    @property
    def cookies_secure(self) -> bool:
        return self.tls_cert is not None if self.secure_cookies is None else self.secure_cookies

    def short_form_source(self) -> dict[str, Any] | None:
        """The [[sources.http]] entry this section stands for when the settings have none:
        one HTTP source on POST /api/v1/ingest, unless the server or `ingest` is off."""
        if not self.enabled or self.ingest is False:
            return None
        entry: dict[str, Any] = {"name": self.source_name or "http"}
        if self.max_body_bytes is not None:
            entry["max_body_bytes"] = self.max_body_bytes
        return entry


class IngestSettings(Section):
    batch_size: int = Field(default=500, ge=1, le=100_000)
    flush_ms: float = Field(default=5.0, ge=0)
    queue_bound: int = Field(default=10_000, ge=1)
    max_in_flight_bytes: int = Field(default=67_108_864, ge=65_536)
    in_flight_wait_s: float = Field(default=5.0, ge=0)


class SpySettings(Section):
    """GET /api/v1/spy: how many may watch, and how far each may fall behind."""

    max_watchers: int = Field(default=8, ge=1, le=1000)
    queue_bytes: int = Field(default=4_194_304, ge=65_536)


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    levels: dict[str, Literal["debug", "info", "warning", "error"]] = Field(default_factory=dict)
    file: str | None = None
    max_bytes: int = Field(default=10_485_760, ge=1024)
    backup_count: int = Field(default=5, ge=0)


class DuneDBSettings(Section):
    """[dunedb]: the DUNE DB instances the `dunedb` commands, the library and the sink use."""

    environments: dict[str, DuneEnvironment] = Field(default_factory=dict)

    @field_validator("environments")
    @classmethod
    def _names(cls, environments: dict[str, DuneEnvironment]) -> dict[str, DuneEnvironment]:
        for name in environments:
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(
                    f"environment name {name!r}: use letters, digits, - and _ (e.g. production)"
                )
        return environments


class Settings(BaseSettings):
    """Every setting of one fieldbridge process."""

    model_config = SettingsConfigDict(
        env_prefix="FIELDBRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
    )
    toml_path: ClassVar[Path | None] = None
    default_run: ClassVar[bool] = False  # no settings file: add the plugins' default-run entries
    preset: ClassVar[dict[str, Any] | None] = None  # --preset: settings below file and env

    store: StoreSettings = Field(default_factory=StoreSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    spy: SpySettings = Field(default_factory=SpySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    dunedb: DuneDBSettings = Field(default_factory=DuneDBSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    sources: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    sinks: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)

    _sources: list[tuple[str, SourceSettings]] = PrivateAttr(default_factory=list)
    _sinks: list[tuple[str, SinkSettings]] = PrivateAttr(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        chain: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_path is not None:
            chain.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_path))
        if cls.preset is not None:
            chain.append(InitSettingsSource(settings_cls, init_kwargs=cls.preset))
        elif cls.toml_path is None and cls.default_run:
            defaults = {"sources": default_run_sources(), "sinks": default_run_sinks()}
            chain.append(InitSettingsSource(settings_cls, init_kwargs=defaults))
        return tuple(chain)

    @model_validator(mode="after")
    def _validate_plugins(self) -> Settings:
        load_builtins()
        problems: list[str] = []
        sources = self._with_http_short_form(problems)
        self._sources = _typed_entries("sources", sources, SOURCE_TYPES, problems)
        self._sinks = _typed_entries("sinks", self.sinks, SINK_TYPES, problems)
        sections = {"dunedb": self.dunedb}
        for section, entries in (("sources", self._sources), ("sinks", self._sinks)):
            for type_name, entry in entries:
                where = f"{section}.{type_name}.{entry.name}"
                problems.extend(f"{where}: {p}" for p in entry.resolve(sections))
        _check_unique("sources", [s.name for _, s in self._sources], problems)
        _check_unique("sinks", [s.name for _, s in self._sinks], problems)
        self._check_http_paths(problems)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _with_http_short_form(self, problems: list[str]) -> dict[str, list[dict[str, Any]]]:
        """[[sources.*]] as given, plus the HTTP source [http]'s short form stands for."""
        if "http" in self.sources:
            for key, instead in HTTP_SHORT_FORM.items():
                if getattr(self.http, key) is not None:
                    problems.append(
                        f"http.{key}: the short form of one [[sources.http]], which is given "
                        f"as well; {instead}"
                    )
            return self.sources
        entry = self.http.short_form_source()
        if entry is None:
            return self.sources
        return {"http": [entry], **{k: v for k, v in self.sources.items() if k != "http"}}

    def _check_http_paths(self, problems: list[str]) -> None:
        served: dict[str, str] = {}
        for type_name, source in self._sources:
            for path in source.http_paths():
                where = f"sources.{type_name}.{source.name}"
                if not self.http.enabled:
                    problems.append(
                        f"{where}: served by the HTTP server, which is off (http.enabled = "
                        "false); turn it on or remove this source"
                    )
                elif path in served:
                    problems.append(
                        f"{where}: path {path} is served by {served[path]} already; give it "
                        "another path"
                    )
                served.setdefault(path, where)

    @property
    def source_settings(self) -> list[tuple[str, SourceSettings]]:
        """(type, settings) of every configured source, in file order."""
        return list(self._sources)

    @property
    def sink_settings(self) -> list[tuple[str, SinkSettings]]:
        """(type, settings) of every configured sink, in file order."""
        return list(self._sinks)

    def dune_environment(self, name: str) -> DuneEnvironment:
        """[dunedb.environments.<name>], or a ConfigError saying how to add it."""
        found = self.dunedb.environments.get(name)
        if found is None:
            known = ", ".join(sorted(self.dunedb.environments)) or "none"
            raise ConfigError(
                f"dunedb.environments.{name}: no such DUNE DB environment in the settings "
                f"(known: {known}); add a [dunedb.environments.{name}] table with auth0_domain, "
                "db_domain, client_id and client_secret, or FIELDBRIDGE_DUNEDB__ENVIRONMENTS__"
                f"{name.upper()}__<KEY> variables"
            )
        return found

    def public_dict(self) -> dict[str, Any]:
        """All settings as JSON-ready data, secrets masked."""
        data = self.model_dump(mode="json", exclude={"sources", "sinks"})
        data["http"]["tokens"] = ["**********" for _ in self.http.tokens]
        data["store"]["url"] = mask_url(self.store.url)
        data["sources"] = _grouped(self._sources)
        data["sinks"] = _grouped(self._sinks)
        return data


def default_run_sources() -> dict[str, list[dict[str, Any]]]:
    """[[sources.*]] of a run without a settings file (environment overrides still apply)."""
    load_builtins()
    return {
        type_name: [dict(entry) for entry in plugin.default_run]
        for type_name, plugin in SOURCE_TYPES.items()
        if plugin.default_run
    }


def default_run_sinks() -> dict[str, list[dict[str, Any]]]:
    """[[sinks.*]] of a run without a settings file (environment overrides still apply)."""
    load_builtins()
    return {
        type_name: [dict(entry) for entry in plugin.default_run]
        for type_name, plugin in SINK_TYPES.items()
        if plugin.default_run
    }


def _typed_entries(
    section: str,
    raw: dict[str, list[dict[str, Any]]],
    registry: dict[str, Any],
    problems: list[str],
) -> list[tuple[str, Any]]:
    typed: list[tuple[str, Any]] = []
    for type_name, entries in raw.items():
        plugin = registry.get(type_name)
        if plugin is None:
            known = ", ".join(sorted(registry)) or "none"
            problems.append(f"{section}.{type_name}: unknown type {type_name!r} (known: {known})")
            continue
        for index, entry in enumerate(entries):
            try:
                typed.append((type_name, plugin.settings.model_validate(entry)))
            except ValidationError as exc:
                problems.extend(
                    _format_error(f"{section}.{type_name}[{index}]", err) for err in exc.errors()
                )
    return typed


def _check_unique(section: str, names: list[str], problems: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            problems.append(f"{section}: name {name!r} is used twice; every name must be unique")
        seen.add(name)


def _grouped(entries: list[tuple[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for type_name, settings in entries:
        data = settings.model_dump(mode="json")
        if isinstance(data.get("url"), str):  # a destination URL may carry credentials
            data["url"] = mask_url(data["url"])
        out.setdefault(type_name, []).append(data)
    return out


def _format_error(prefix: str, err: Any) -> str:
    path = prefix
    for part in err.get("loc", ()):
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not path:
        return message
    return f"{path}: {message}"


def config_path(explicit: str | Path | None) -> Path | None:
    """The settings file to read: --config, else $FIELDBRIDGE_CONFIG, else none."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else None


def load_settings(path: str | Path | None = None, preset: str | None = None) -> Settings:
    """Read and validate the settings; raise ConfigError naming every bad key.

    `preset`: settings made from a replaced program's environment variables (presets.py),
    under those of the file and FIELDBRIDGE_* variables.
    """
    from fieldbridge.presets import preset_settings

    preset_data = None if preset is None else preset_settings(preset, os.environ)
    toml_path = config_path(path)
    if toml_path is not None:
        if not toml_path.is_file():
            raise ConfigError(
                f"{toml_path}: no such settings file (given by --config or {CONFIG_ENV})"
            )
        try:
            with toml_path.open("rb") as handle:
                tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: not valid TOML: {exc}") from exc
    bound = type(
        "FileSettings",
        (Settings,),
        {
            "toml_path": toml_path,
            "default_run": toml_path is None,
            "preset": preset_data,
            "__module__": __name__,
        },
    )
    where = str(toml_path) if toml_path else "settings"
    try:
        settings: Settings = bound()
    except ValidationError as exc:
        lines = [_format_error("", err) for err in exc.errors()]
        body = "\n".join(lines).replace("\n", "\n  ")
        raise ConfigError(f"{where} is invalid:\n  {body}") from exc
    except SettingsError as exc:  # an environment override that is not valid JSON
        raise ConfigError(
            f"{where}: {exc}; a FIELDBRIDGE_<SECTION>__<KEY> override of a list or table "
            'must be JSON, e.g. \'["a", "b"]\' or \'{"key": "value"}\''
        ) from exc
    return settings
