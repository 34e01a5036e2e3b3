"""Peer liveness: when to probe a quiet peer, when to give up on it, what its round trip is.

As in r2net, any message received proves the peer alive; only silence is
suspicious. The clock that matters is the time the last bytes arrived
(`last_rx`), kept by the connection:

    silent < keepalive                  nothing to do; look again when it turns keepalive
    keepalive <= silent < idle_timeout  send one Keepalive (never two in flight); its
                                        KeepaliveReply, like any reply, resets last_rx
    silent >= idle_timeout              the peer is dead: close the connection, and the
                                        pages it holds are treated as its peers treat a
                                        lost node's

A connection also sends one Keepalive as soon as the handshake ends, so a
new peer's round trip and free frames are known at once rather than after
the first quiet interval. Replies carry the sender's free page frames
(PutReply, GetReply, Ack and KeepaliveReply all do), so a busy connection
keeps that figure fresh without any keepalive at all.

The round trip is an exponentially weighted average of keepalive round
trips (weight RTT_WEIGHT for the newest): it only ranks peers for placement,
so it favours stability over the latest sample.

Nothing here reads a clock or a socket: `Liveness.check(now, last_rx, probing)`
is a pure decision, tested without either.
"""
from __future__ import annotations

RTT_WEIGHT = 0.25  # EWMA weight of a new keepalive round trip
MIN_WAIT = 0.005  # never spin: a check right at a deadline waits at least this

QUIET, PROBE, DEAD = "quiet", "probe", "dead"


class Liveness:
    """The keepalive and idle-timeout decision for one connection."""

    def __init__(self, keepalive: float, idle_timeout: float):
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout

    def check(self, now: float, last_rx: float, probing: bool) -> tuple[str, float]:
        """(QUIET, PROBE or DEAD, seconds until the next check) for a connection that last
        received at `last_rx`; `probing`: a Keepalive is in flight."""
        silent = now - last_rx
        if silent >= self.idle_timeout:
            return DEAD, 0.0
        due = silent >= self.keepalive
        # once a probe is out (or due), only the idle deadline is left to watch for
        wake = last_rx + (self.idle_timeout if probing or due else self.keepalive)
        # a reply in flight may refresh last_rx before the idle deadline: look again sooner
        wait = max(MIN_WAIT, min(wake - now, self.keepalive))
        return (PROBE if due and not probing else QUIET), wait


def smoothed_rtt(previous: float | None, sample: float) -> float:
    """The new round-trip estimate after measuring `sample` seconds."""
    return sample if previous is None else (1 - RTT_WEIGHT) * previous + RTT_WEIGHT * sample
