"""Rendezvous routing over a static replica list: stable per session, minimal movement, failover order."""

from __future__ import annotations

import pytest

from services.orchestrator.routing import (
    Replicas,
    Router,
    RoutingMetrics,
    ready_addresses,
    rendezvous_order,
    replica_source,
)

SESSIONS = [f"session-{i}" for i in range(3000)]
ADDRS = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]


def first_choices(addrs):
    return {s: rendezvous_order(s, addrs)[0] for s in SESSIONS}


def test_adding_a_replica_moves_only_its_share():
    before, after = first_choices(ADDRS), first_choices(ADDRS + ["10.0.0.4:8001"])
    moved = [s for s in SESSIONS if before[s] != after[s]]
    assert all(after[s] == "10.0.0.4:8001" for s in moved)  # sessions move only to the new replica
    assert 0.2 < len(moved) / len(SESSIONS) < 0.3  # ~1/4


def test_removing_a_replica_moves_only_its_sessions_to_their_next_choice():
    before, after = first_choices(ADDRS), first_choices(ADDRS[1:])
    for s in SESSIONS:
        if before[s] != ADDRS[0]:
            assert after[s] == before[s]
        else:
            assert after[s] == rendezvous_order(s, ADDRS)[1]


def test_static_list_setting_and_quarantine_order():
    replicas, source = replica_source("llm", " 10.0.0.1:8001, 10.0.0.2:8001 ")
    assert source is None and replicas.snapshot() == {"10.0.0.1:8001", "10.0.0.2:8001"}
    router = Router("llm", replicas, connect=lambda addr: addr, metrics=RoutingMetrics(), quarantine_s=60)
    first, second = router.order("s1")
    router.mark_down(first, "test")
    assert router.order("s1") == [second, first]  # a quarantined replica is tried last, not dropped
    replicas.set(["10.0.0.9:8001"])
    assert router.pick("s1") == ("10.0.0.9:8001", "10.0.0.9:8001")
    with pytest.raises(ValueError):
        replica_source("llm", " , ")
    with pytest.raises(ValueError):
        replica_source("llm", "endpointslices://only-a-namespace")


def test_ready_addresses_skip_unready_endpoints_and_other_ports():
    slices = [{
        "ports": [{"name": "grpc", "port": 8001}, {"name": "http", "port": 8000}],
        "endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": False, "terminating": True}},
            {"addresses": ["10.1.0.3"]},
        ],
    }]
    assert ready_addresses(slices, "grpc") == {"10.1.0.1:8001", "10.1.0.3:8001"}
    assert Replicas(["a:1"]).snapshot() == {"a:1"}
