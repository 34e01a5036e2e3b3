"""Peer liveness decisions, without a clock or a socket: probe after silence, give up after idle_timeout."""
from __future__ import annotations

import pytest

from ramster.remote.keepalive import DEAD, MIN_WAIT, PROBE, QUIET, RTT_WEIGHT, Liveness, smoothed_rtt

KEEPALIVE, IDLE = 2.0, 30.0


@pytest.fixture
def live():
    return Liveness(KEEPALIVE, IDLE)


def test_a_talking_peer_is_left_alone_until_keepalive(live):
    assert live.check(100.0, 100.0, False) == (QUIET, KEEPALIVE)
    assert live.check(101.5, 100.0, False) == (QUIET, 0.5)


def test_silence_sends_one_probe_and_then_waits_for_it(live):
    action, wait = live.check(102.0, 100.0, False)
    assert action == PROBE and 0 < wait <= KEEPALIVE
    # with the probe in flight: never a second one, however long the silence
    for now in (102.0, 110.0, 129.0):
        action, wait = live.check(now, 100.0, True)
        assert action == QUIET and MIN_WAIT <= wait <= KEEPALIVE
    # a probe that timed out without a reply: silence continues, another goes out
    assert live.check(110.0, 100.0, False)[0] == PROBE


def test_idle_timeout_of_silence_is_death_whatever_is_in_flight(live):
    for probing in (False, True):
        assert live.check(130.0, 100.0, probing) == (DEAD, 0.0)
        assert live.check(129.999, 100.0, probing)[0] != DEAD


def test_the_next_check_never_misses_the_idle_deadline(live):
    for now in (100.0, 101.0, 102.0, 115.0, 128.0, 129.9):
        _, wait = live.check(now, 100.0, True)
        assert now + wait <= 100.0 + IDLE + MIN_WAIT


def test_any_bytes_received_restart_the_clock(live):
    assert live.check(131.0, 130.5, False) == (QUIET, 1.5)


def test_round_trip_is_smoothed():
    assert smoothed_rtt(None, 0.010) == 0.010
    assert smoothed_rtt(0.010, 0.050) == pytest.approx((1 - RTT_WEIGHT) * 0.010 + RTT_WEIGHT * 0.050)
    rtt = None
    for _ in range(50):
        rtt = smoothed_rtt(rtt, 0.002)
    assert rtt == pytest.approx(0.002)
