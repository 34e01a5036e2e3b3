"""Fault injection for RAMster clusters (issue 8), in the spirit of Jepsen and QEMU's nbd-fault-injector.

Real `ramster node` processes on loopback; a proxy on every peer link (proxy.py); nemeses that kill,
pause, restart, partition, fill the swap disk or start a node with other settings (nemesis.py);
NBD clients that record every operation (workload.py) and a checker of that history against
DESIGN.md's trust contract (history.py); random schedules from a seed (schedule.py).

    pytest tests/fault                                   # everything (a few minutes)
    RAMSTER_FAULT_SEED=17 pytest tests/fault -k seed17-  # replay one schedule
    RAMSTER_FAULT_SEED_BASE=1000 pytest tests/fault -k schedule   # 24 schedules CI does not run

Needs root (a tmpfs is mounted for the full-disk faults) and python libnbd; with CI=true a
missing one fails the tests instead of skipping them.
"""
