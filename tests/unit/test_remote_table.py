"""The remote table (remote/table.py): entries, reuse, and the tallies kept as entries change."""
import pytest

from ramster.remote.table import MAX_COPIES, RemoteTable


def test_entries_are_reused_and_tallies_follow_the_holders():
    t = RemoteTable(replicas=2)
    a = t.alloc([1, 2], 100, 0xAB, 1)
    b = t.alloc([3], 200, 0xCD, 0, on_disk=True)
    assert t.nodes(a) == [1, 2] and t.nodes(b) == [3] and t.live == 2
    assert t.held[1] == t.held[2] == t.held[3] == 1
    assert t.alone[3] == 1 and t.alone[1] == 0 and t.short == 1  # b has one copy of two
    t.set_nodes(a, [2])  # node 1 lost its copy
    assert t.held[1] == 0 and t.alone[2] == 1 and t.short == 2
    t.set_nodes(a, [])  # no copy left: counted nowhere (lost, or on the disk)
    assert t.held[2] == 0 and t.alone[2] == 0 and t.short == 1
    t.release(b)
    assert t.live == 1 and t.held[3] == 0 and t.short == 0 and list(t.entries()) == [a]
    c = t.alloc([4], 50, 1, 1)
    assert c == b and t.size[c] == 50 and not t.on_disk[c]  # the freed entry, with nothing left of b
    with pytest.raises(ValueError):
        t.set_nodes(c, list(range(MAX_COPIES + 1)))
