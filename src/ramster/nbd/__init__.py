"""Network Block Device: the protocol as sans-I/O state machines, an asyncio server, and exports.

    wire.py        the bytes: numbers, layouts, packing (proto.md)
    handshake.py   the handshake as a state machine (bytes in, events out)
    protocol.py    one connection as a state machine: the handshake, then requests
    base.py        the Export interface; swap.py, cache.py, ramdisk.py the exports
    server.py      the asyncio server; connection.py one client, dispatch.py one
                   request, admission.py the memory connections hold
"""
