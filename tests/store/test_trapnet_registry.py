"""The trap network in the store, on both backends: message types named at commit, roles,
gateway links, teams, trap events of unknown nodes, and ignored messages in quarantine."""

from __future__ import annotations

from fieldbridge.codecs.trapnet import TRAP_EVENT, build
from fieldbridge.ingest import Ingest
from fieldbridge.model import (
    Accepted,
    DeviceStatus,
    FieldType,
    MessageField,
    MessageType,
    Rejected,
    Role,
)
from fieldbridge.store import Store

AT = 1_800_000_000.0
CODEC = build({})
AIR = MessageType(
    "air",
    (
        MessageField("Temperature", FieldType.FLOAT),
        MessageField("Humidity", FieldType.FLOAT),
        MessageField("Site", FieldType.TEXT, is_tag=True),
        MessageField("Version", FieldType.TEXT),
        MessageField("VBat", FieldType.FLOAT),
    ),
    "air quality node",
)


async def send(store: Store, *messages: tuple[str, str], at: float = AT) -> list[object]:
    async with Ingest(store) as ingest:
        return [
            await ingest.submit("aklc", payload.encode(), CODEC, {"topic": topic}, at + i)
            for i, (topic, payload) in enumerate(messages)
        ]


async def quantities(store: Store, device: str) -> list[tuple[str, float | None]]:
    return [(r.reading.quantity, r.reading.value) for r in await store.list_readings(device)]


async def test_csv_values_are_named_by_the_nodes_message_type_as_it_is_at_commit(
    store: Store,
) -> None:
    assert await store.save_message_type(AIR, replace=False)
    assert not await store.save_message_type(AIR, replace=False)
    [first] = await send(store, ("AKLC/Gateway", "GW1,Air1,20.5,60,Bayfield,1.2,4.1"))
    assert isinstance(first, Accepted)
    assert await quantities(store, "Air1") == []  # no message type yet: the line is kept only
    device = await store.update_device("Air1", message_type="air")
    assert device is not None and device.message_type == "air"

    await send(store, ("AKLC/Gateway", "GW1,Air1,RP7,21.0,61,Bayfield,1.3,4.0"), at=AT + 10)
    stored = await store.list_readings("Air1")
    assert [(r.reading.quantity, r.reading.value) for r in stored] == [
        ("Temperature", 21.0),
        ("Humidity", 61.0),
        ("VBat", 4.0),
    ]
    assert stored[0].reading.extra == {"tags": {"Site": "Bayfield"}}
    air1 = await store.get_device("Air1")
    assert air1 is not None
    assert (air1.attributes["Version"], air1.attributes["battery"]) == ("1.3", 4.0)
    assert air1.attributes["message_type"] == "air"

    # Edited while running: the next commit reads the new names.
    renamed = MessageType("air", (MessageField("temp_c", FieldType.INTEGER),))
    assert await store.save_message_type(renamed, replace=True)
    await send(store, ("AKLC/Gateway", "GW1,Air1,22,62"), at=AT + 20)
    assert (await quantities(store, "Air1"))[-1] == ("temp_c", 22.0)
    assert [m.name for m in await store.list_message_types()] == ["air"]
    assert await store.devices_using("air") == ["Air1"]


async def test_gateways_repeaters_and_nodes_get_their_roles_and_links(store: Store) -> None:
    await send(
        store,
        ("AKLC/Gateway", "TTGWCX,Trap017,RPWaiake,1,0,3.71,-97"),
        ("AKLC/Gateway", "TTGWBay,Trap017,0,1"),
        ("AKLC/Gateway", "TTGWCX,RPWaiake,OK,12.6"),
        ("AKLC/Status", "TTGWCX,LoRa32,1.4.2"),
        # A gateway reporting on a node's topic family stays a gateway.
        ("AKLC/Network/TTGWCX", '{"Status":"OK","Version":"1.4.3"}'),
    )
    roles = {d.id: d.role for d in await store.list_devices()}
    assert roles == {
        "TTGWCX": Role.GATEWAY,
        "TTGWBay": Role.GATEWAY,
        "RPWaiake": Role.REPEATER,
        "Trap017": Role.NODE,
    }
    links = await store.device_links("Trap017")
    assert [(link.via, link.role, link.last_seen) for link in links] == [
        ("TTGWBay", Role.GATEWAY, AT + 1),
        ("RPWaiake", Role.REPEATER, AT),
        ("TTGWCX", Role.GATEWAY, AT),
    ]
    assert [link.via for link in await store.relayed_by("TTGWCX")] == ["RPWaiake", "Trap017"]
    gateway = await store.get_device("TTGWCX")
    assert gateway is not None
    assert gateway.last_seen == AT + 4
    assert gateway.attributes["software"] == "1.4.3"
    assert gateway.attributes["last_status"] == '{"Status":"OK","Version":"1.4.3"}'
    assert gateway.message_count == 2  # its own Status and Network; relaying counts apart
    assert (gateway.status, gateway.allowed_downtime_min) == (DeviceStatus.CURRENT, 60)


async def test_team_topics_set_the_team_and_ignored_messages_go_to_quarantine(
    store: Store,
) -> None:
    outcomes = await send(
        store,
        ("Waiheke/traps", '{"NodeID":"Trap9","Catches":2}'),
        ("AKLC/Gateway", "TTGWCX,TestNode1,1,2"),
        ("AKLC/Gateway", "TTGWCX-GWSTATUS,1,OK"),
        ("AKLC/Network/Trap9", '{"Status":"Missing"}'),
        ("AKLC/Gateway", "TTGWCX,Tr@p,1"),
    )
    assert isinstance(outcomes[0], Accepted)
    causes = [o.cause for o in outcomes[1:] if isinstance(o, Rejected)]
    assert causes == ["ignored", "ignored", "ignored", "invalid_node_id"]
    device = await store.get_device("Trap9")
    assert device is not None and device.team == "Waiheke"
    assert await quantities(store, "Trap9") == [("Catches", 2.0)]
    assert {d.id for d in await store.list_devices()} == {"Trap9"}  # no Test or gateway rows
    kept = await store.list_quarantine()
    assert [q.reason.split(":")[0] for q in kept] == ["Gateway field 2 (node id)"] + ["ignored"] * 3


async def test_trap_events_of_unknown_nodes_are_stored_without_creating_the_node(
    store: Store,
) -> None:
    await send(store, ("AKLC/Node/Trap1", '{"VBat":3.9}'))
    await send(
        store,
        ("EnvironmentalServices/x", '{"NodeID":"Trap1","Event":"T","State":"O","TrapID":"T-1"}'),
        ("EnvironmentalServices/x", '{"NodeID":"Ghost","Event":"H","State":"C"}'),
        ("EnvironmentalServices/x", '{"NodeID":"Trap1","Event":"Q","State":"O"}'),
        at=AT + 100,
    )
    assert {d.id for d in await store.list_devices()} == {"Trap1"}
    trap1 = await store.get_device("Trap1")
    assert trap1 is not None
    assert (trap1.message_count, trap1.last_seen, trap1.attributes["trap_id"]) == (
        3,
        AT + 102,
        "T-1",
    )
    events = [
        r.reading for r in await store.list_readings("Trap1") if r.reading.quantity == TRAP_EVENT
    ]
    assert [e.extra for e in events] == [
        {"event": "T", "state": "O", "trap_id": "T-1"},
        {"event": "Q", "state": "O", "problem": "bad_event"},
    ]
    [ghost] = await store.list_readings("Ghost")
    assert ghost.reading.extra == {"event": "H", "state": "C"}


async def test_status_role_downtime_and_team_are_set_by_hand(store: Store) -> None:
    await send(store, ("AKLC/Node/Trap1", '{"VBat":3.9}'))
    device = await store.update_device(
        "Trap1",
        status=DeviceStatus.MAINTENANCE,
        allowed_downtime_min=240,
        team="Waiheke",
        role=Role.REPEATER,
        at=AT + 50,
    )
    assert device is not None
    assert (device.status, device.status_since, device.allowed_downtime_min) == (
        DeviceStatus.MAINTENANCE,
        AT + 50,
        240,
    )
    assert (device.team, device.role) == ("Waiheke", Role.REPEATER)
    cleared = await store.update_device("Trap1", team=None)
    assert cleared is not None and cleared.team is None
