"""Logins, sessions, CSRF, API tokens, rate limits, the first admin and TLS, on a real Service."""

from __future__ import annotations

import json
import re
import sqlite3
import ssl
import subprocess
from pathlib import Path

import httpx

from tests.support.processes import FieldbridgeProcess, child_env, run_cli
from tests.support.web import csrf_of, login, store_token, store_user
from tests.web.test_http_api import serve

PASSWORD = "correct horse battery"


def anonymous(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=10.0)


def csrf_of_page(page: httpx.Response) -> str:
    return csrf_of(page.text)


def base_of(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/")


async def test_anonymous_requests_are_sent_to_login_or_refused(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb, anonymous(base_of(fb.client)) as nobody:
        page = await nobody.get("/devices?q=trap 7")
        assert page.status_code == 303
        # The query as the browser sent it (q=trap%207), encoded once more as one parameter.
        assert page.headers["location"] == "/login?next=%2Fdevices%3Fq%3Dtrap%25207"
        for path in ("/api/v1/spy", "/api/v1/session", "/api/v1/anything"):
            refused = await nobody.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "unauthenticated"
            assert refused.headers["www-authenticate"] == "Bearer"
        assert (await nobody.get("/healthz")).status_code == 200
        assert (await nobody.get("/metrics")).status_code == 200
        # The sensors' own endpoint is not the console's: http.tokens guards it, unset here.
        posted = await nobody.post("/api/v1/ingest", json={"device": "d", "readings": {"t": 1}})
        assert posted.status_code == 200


async def test_metrics_can_need_a_login(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"metrics_public": False}) as fb:
        async with anonymous(base_of(fb.client)) as nobody:
            assert (await nobody.get("/metrics")).status_code == 401
        assert (await fb.client.get("/metrics")).status_code == 200  # a read token


async def test_login_sets_a_safe_session_cookie_and_logout_needs_csrf(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        await store_user(fb.store, "alice", "viewer", PASSWORD)
        async with anonymous(base_of(fb.client)) as browser:
            form = await browser.get("/login", params={"next": "/sinks"})
            assert 'name="username"' in form.text and 'name="password"' in form.text
            answer = await browser.post(
                "/login",
                data={
                    "username": "alice",
                    "password": PASSWORD,
                    "csrf_token": csrf_of(form.text),
                    "next": "/sinks",
                },
            )
            assert answer.status_code == 303
            assert answer.headers["location"] == "/sinks"
            cookie = next(
                c for c in answer.headers.get_list("set-cookie") if "fieldbridge_session" in c
            )
            assert "HttpOnly" in cookie and "SameSite=lax" in cookie
            assert "Secure" not in cookie  # plain HTTP, no secure_cookies
            me = (await browser.get("/api/v1/session")).json()
            assert me["name"] == "alice" and me["role"] == "viewer"
            assert me["via"] == "session" and not me["can_write"] and not me["is_admin"]
            csrf = me["csrf_token"]
            assert (await browser.post("/logout")).status_code == 403  # no CSRF token
            assert (await browser.get("/api/v1/session")).status_code == 200  # still in
            out = await browser.post("/logout", headers={"X-CSRF-Token": csrf})
            assert out.status_code == 303
            browser.cookies.clear()
            # The old cookie is dead on the server too, not only forgotten by the browser.
            stale = cookie.split(";")[0].split("=", 1)[1]
            again = await browser.get(
                "/api/v1/session", headers={"Cookie": f"fieldbridge_session={stale}"}
            )
            assert again.status_code == 401
        actions = [e.action for e in await fb.store.list_audit(actor="alice")]
        assert actions == ["user.logout", "user.login"]


async def test_next_never_leaves_the_site(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        await store_user(fb.store, "alice", "admin", PASSWORD)
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            async with anonymous(base_of(fb.client)) as browser:
                form = await browser.get("/login")
                answer = await browser.post(
                    "/login",
                    data={
                        "username": "alice",
                        "password": PASSWORD,
                        "csrf_token": csrf_of(form.text),
                        "next": target,
                    },
                )
                assert answer.headers["location"] == "/", target


async def test_a_login_form_without_its_csrf_cookie_is_refused(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        await store_user(fb.store, "alice", "admin", PASSWORD)
        async with anonymous(base_of(fb.client)) as other_site:
            answer = await other_site.post(
                "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": "x"}
            )
            assert answer.status_code == 403
            assert "fieldbridge_session" not in answer.headers.get("set-cookie", "")


async def test_cookie_writes_need_the_csrf_token_tokens_do_not(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        await store_user(fb.store, "root", "admin", PASSWORD)
        async with anonymous(base_of(fb.client)) as browser:
            csrf = await login(browser, "root", PASSWORD)
            refused = await browser.post("/api/v1/session")
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "csrf_failed"
            wrong = await browser.post("/api/v1/session", headers={"X-CSRF-Token": "nope"})
            assert wrong.status_code == 403
            form = await browser.post("/api/v1/session", data={"csrf_token": csrf})
            assert form.status_code == 405  # past the gate: the route only has GET
            header = await browser.post("/api/v1/session", headers={"X-CSRF-Token": csrf})
            assert header.status_code == 405
        token = await store_token(fb.store, "write")
        async with anonymous(base_of(fb.client)) as script:
            bearer = {"Authorization": f"Bearer {token}"}
            assert (await script.post("/api/v1/session", headers=bearer)).status_code == 405


async def test_failed_logins_are_limited_per_name_and_address(tmp_path: Path) -> None:
    http = {"login_max_failures": 3, "login_window_s": 600}
    async with serve(tmp_path, http=http) as fb:
        await store_user(fb.store, "alice", "admin", PASSWORD)
        async with anonymous(base_of(fb.client)) as attacker:
            for _ in range(3):
                form = await attacker.get("/login")
                answer = await attacker.post(
                    "/login",
                    data={
                        "username": "alice",
                        "password": "guess",
                        "csrf_token": csrf_of(form.text),
                    },
                )
                assert answer.status_code == 401
                assert "Wrong user name or password." in answer.text
            form = await attacker.get("/login")
            limited = await attacker.post(
                "/login",
                data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
            )
            assert limited.status_code == 429  # even the right password, for now
            assert int(limited.headers["retry-after"]) > 500
            assert "Too many failed logins" in limited.text


async def test_api_tokens_have_scopes_and_revoked_ones_get_401(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"tokens": ["legacy-ingest-token"]}) as fb:
        read = await store_token(fb.store, "read", name="grafana")
        write = await store_token(fb.store, "write", name="deploy")
        async with anonymous(base_of(fb.client)) as script:
            me = (await script.get("/api/v1/session", headers=bearer(read))).json()
            assert (me["name"], me["scope"], me["can_write"]) == ("grafana", "read", False)
            me = (await script.get("/api/v1/session", headers=bearer(write))).json()
            assert (me["scope"], me["can_write"], me["is_admin"]) == ("write", True, False)
            legacy = await script.get("/api/v1/session", headers=bearer("legacy-ingest-token"))
            assert legacy.json()["scope"] == "read"  # http.tokens: the spy, reading only
            assert (await script.get("/api/v1/session", headers=bearer("fb_x"))).status_code == 401
            assert await fb.store.revoke_api_token("grafana")
            gone = await script.get("/api/v1/session", headers=bearer(read))
            assert gone.status_code == 401
        listed = {t.name: t for t in await fb.store.list_api_tokens()}
        assert listed["grafana"].revoked_at is not None
        assert listed["deploy"].last_used is not None
        rows = sqlite3.connect(fb.db_path).execute("SELECT token_hash FROM api_tokens").fetchall()
        assert read not in {r[0] for r in rows} and all(len(r[0]) == 64 for r in rows)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_first_run_prints_an_admin_password_once(tmp_path: Path) -> None:
    with FieldbridgeProcess(tmp_path / "first") as process:
        process.start()
        log = process.log_path.read_text()
        found = re.search(r"Password \(shown only this once\): (\S+)", log)
        assert found, log
        password = found.group(1)
        with httpx.Client(base_url=process.base_url, timeout=10.0) as browser:
            form = browser.get("/login")
            answer = browser.post(
                "/login",
                data={"username": "admin", "password": password, "csrf_token": csrf_of(form.text)},
            )
            assert answer.status_code == 303
            assert browser.get("/api/v1/session").json()["is_admin"] is True
        process.terminate()
        assert process.wait(30) == 0
        process.start()
    assert process.log_path.read_text().count("shown only this once") == 1
    rows = sqlite3.connect(process.db_path).execute("SELECT name, password_hash FROM users")
    [(name, hashed)] = rows.fetchall()
    assert name == "admin" and hashed.startswith("$argon2id$") and password not in hashed


def test_users_and_tokens_commands(tmp_path: Path) -> None:
    process = FieldbridgeProcess(tmp_path / "cli")  # not started: the commands need no service
    config = process.config_path

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--config", str(config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
            check=False,
        )

    added = cli("users", "add", "alice", "--role", "viewer", "--json", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    again = cli("users", "add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "user alice exists" in again.stderr
    short = cli("users", "add", "bob", "--role", "viewer", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad_role = cli("users", "add", "bob", "--role", "root", stdin=PASSWORD + "\n")
    assert bad_role.returncode == 2
    assert cli("users", "passwd", "alice", stdin="another password\n").returncode == 0
    assert cli("users", "passwd", "nobody", stdin="another password\n").returncode == 1
    listed = cli("users", "list", "--json")
    assert [u["name"] for u in json.loads(listed.stdout)] == ["alice"]
    made = cli("tokens", "create", "--name", "grafana", "--scope", "read", "--json")
    token = json.loads(made.stdout)["token"]
    assert token.startswith("fb_")
    plain = cli("tokens", "create", "--name", "deploy", "--scope", "write")
    assert plain.returncode == 0 and plain.stdout.strip().splitlines()[-1].startswith("fb_")
    assert cli("tokens", "create", "--name", "grafana", "--scope", "read").returncode == 1
    tokens = json.loads(cli("tokens", "list", "--json").stdout)
    assert [(t["name"], t["scope"], t["revoked_at"]) for t in tokens] == [
        ("deploy", "write", None),
        ("grafana", "read", None),
    ]
    assert token not in cli("tokens", "list", "--json").stdout
    assert cli("tokens", "revoke", "grafana").returncode == 0
    assert cli("tokens", "revoke", "grafana").returncode == 1
    assert cli("users", "remove", "alice", "--json").returncode == 0
    audit = sqlite3.connect(process.db_path).execute("SELECT actor, action, target FROM audit_log")
    actions = [(a.split(":")[0], act, t) for a, act, t in audit.fetchall()]
    assert actions == [
        ("cli", "user.create", "alice"),
        ("cli", "user.passwd", "alice"),
        ("cli", "token.create", "grafana"),
        ("cli", "token.create", "deploy"),
        ("cli", "token.revoke", "grafana"),
        ("cli", "user.delete", "alice"),
    ]


CLI = [str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "fieldbridge")]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_tls_serves_https_with_secure_cookies(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    http = {"tls_cert": str(cert), "tls_key": str(key)}
    async with serve(tmp_path, http=http, scheme="https") as fb:
        await store_user(fb.store, "alice", "admin", PASSWORD)
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(
            base_url=base_of(fb.client), verify=trusted, timeout=10.0
        ) as browser:
            assert (await browser.get("/healthz")).status_code == 200
            form = await browser.get("/login")
            answer = await browser.post(
                "/login",
                data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
            )
            assert answer.status_code == 303
            cookie = next(
                c for c in answer.headers.get_list("set-cookie") if "fieldbridge_session" in c
            )
            assert "Secure" in cookie


def test_tls_settings_name_the_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "fb.toml"
    config.write_text('[http]\ntls_cert = "/nowhere/cert.pem"\ntls_key = "/nowhere/key.pem"\n')
    done = run_cli("config", "check", config=config)
    assert done.returncode == 2
    assert "http.tls_cert /nowhere/cert.pem: no such file" in done.stderr
    config.write_text('[http]\ntls_cert = "/etc/hostname"\n')
    done = run_cli("config", "check", config=config)
    assert "http.tls_cert and http.tls_key go together" in done.stderr
