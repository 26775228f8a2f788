"""Users, sessions, API tokens and the audit log on both backends."""

from __future__ import annotations

import time

from fieldbridge.store import Store


async def test_users_are_added_once_and_lose_their_sessions_with_a_new_password(
    store: Store,
) -> None:
    assert await store.count_users() == 0
    assert await store.add_user("alice", "viewer", "$argon2id$h1")
    assert not await store.add_user("alice", "admin", "$argon2id$h2")  # nothing changed
    assert await store.password_hash("alice") == "$argon2id$h1"
    await store.open_session("s1", "alice", "csrf1", time.time() + 60)
    session = await store.session("s1")
    assert session is not None and (session.username, session.role) == ("alice", "viewer")
    assert await store.set_role("alice", "admin")
    assert (await store.session("s1")).role == "admin"  # type: ignore[union-attr]
    assert await store.set_password("alice", "$argon2id$h3")
    assert await store.session("s1") is None
    assert not await store.set_password("nobody", "x")
    [user] = await store.list_users()
    assert user.name == "alice" and user.last_login is not None
    await store.open_session("s2", "alice", "csrf2", time.time() - 1)  # already expired
    assert await store.session("s2") is None
    await store.open_session("s3", "alice", "csrf3", time.time() + 60)
    assert await store.delete_user("alice")
    assert await store.session("s3") is None
    assert not await store.delete_user("alice")


async def test_tokens_by_hash_until_revoked(store: Store) -> None:
    assert await store.create_api_token("grafana", "read", "h" * 64, "cli:root")
    assert not await store.create_api_token("grafana", "write", "g" * 64)
    found = await store.api_token_by_hash("h" * 64)
    assert found is not None and (found.name, found.scope) == ("grafana", "read")
    assert await store.api_token_by_hash("x" * 64) is None
    [listed] = await store.list_api_tokens()
    assert listed.last_used is not None and listed.created_by == "cli:root"
    assert await store.revoke_api_token("grafana")
    assert not await store.revoke_api_token("grafana")
    assert await store.api_token_by_hash("h" * 64) is None
    assert not await store.create_api_token("grafana", "read", "i" * 64)  # never reused


async def test_the_audit_log_pages_newest_first(store: Store) -> None:
    for n in range(5):
        await store.record_audit("root", "device.update", f"dev-{n}", {"flags": {"x": n}})
    await store.record_audit("token:deploy", "sink.pause", "influx")
    newest = await store.list_audit(limit=2)
    assert [(e.actor, e.action, e.target) for e in newest] == [
        ("token:deploy", "sink.pause", "influx"),
        ("root", "device.update", "dev-4"),
    ]
    older = await store.list_audit(limit=10, before=newest[-1].id)
    assert [e.target for e in older] == ["dev-3", "dev-2", "dev-1", "dev-0"]
    assert older[0].details == {"flags": {"x": 3}}
    assert [e.target for e in await store.list_audit(action="sink.pause")] == ["influx"]
    assert len(await store.list_audit(actor="root")) == 5
