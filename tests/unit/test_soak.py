"""loadtest.soak's arithmetic and verdict, on this test's own process and hand-made samples (the soak against
the real stack: tests/loadtest/test_soak.py)."""

from __future__ import annotations

import os
import subprocess

from loadtest.soak import MIB, describe, per_process, rss_bytes, slope, verdict


def test_rss_of_a_live_process_and_of_one_that_is_gone():
    mine = rss_bytes(os.getpid())
    assert mine is not None and mine > 10 * MIB
    block = bytearray(64 * MIB)  # touched: resident
    grown = rss_bytes(os.getpid())
    assert grown - mine > 50 * MIB
    del block
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    assert rss_bytes(child.pid) is None
    assert describe(os.getpid()) != "?" and describe(child.pid) == "?"


def test_start_is_the_first_sample_after_warm_up_and_growth_is_end_minus_start():
    samples = [{"t": 0.0, "rss": {1: 100 * MIB, 2: 50 * MIB}},
               {"t": 5.0, "rss": {1: 300 * MIB, 2: 60 * MIB}},
               {"t": 10.0, "rss": {1: 320 * MIB, 2: 40 * MIB}},
               {"t": 15.0, "rss": {1: 310 * MIB}}]  # pid 2 is gone
    rows = per_process(samples, {1: {"component": "triton", "name": "a"}, 2: {"component": "redis", "name": "b"}}, 5.0)
    one, two = rows
    assert (one["start_mib"], one["peak_mib"], one["end_mib"], one["growth_mib"]) == (300.0, 320.0, 310.0, 10.0)
    assert (two["start_mib"], two["peak_mib"], two["end_mib"], two["growth_mib"]) == (60.0, 60.0, 40.0, -20.0)
    assert (one["samples"], two["samples"]) == (4, 3)
    assert slope([(0.0, 0), (1.0, MIB), (2.0, 2 * MIB)]) == MIB and slope([(0.0, 5)]) == 0.0
    assert one["late_mib_per_min"] == -120.0  # the last two samples: 320 -> 310 MiB in 5 s


def test_verdict_names_growth_leaked_streams_unread_gauges_and_survivors():
    report = {"processes": [{"pid": 1, "component": "triton", "name": "a", "growth_mib": 65.0},
                            {"pid": 2, "component": "redis", "name": "b", "growth_mib": 1.0}],
              "streams_after": {"llm_active": 1.0, "speech_decoder_open_streams": 0.0, "llm_queued": None},
              "load": {"answered": 0, "log": "x"}, "left_after_down": [{"pid": 3, "name": "stub"}],
              "down": {"exit_code": 0}}
    failures = verdict(report, 64.0)
    assert len(failures) == 5, failures
    assert "grew 65.0 MiB" in failures[0] and "llm_active = 1" in failures[1] and "llm_queued" in failures[2]
    report.update(processes=report["processes"][1:], streams_after=dict.fromkeys(report["streams_after"], 0.0),
                  load={"answered": 3}, left_after_down=[])
    assert verdict(report, 64.0) == []
