"""RAMster: a node's pages on other nodes' memory, over one connection per pair of nodes.

The transport, bottom up; each layer only uses the one below it:

    wire.py         the codec: messages <-> bytes, every length capped (sans-I/O)
    session.py      the signed handshake over those bytes: who is at the other end,
                    proven, and can we work together (sans-I/O)
    keepalive.py    when a quiet peer is probed and when it is given up (sans-I/O)
    connection.py   one asyncio connection: the Session, then requests matched to
                    replies with deadlines, back pressure both ways
    peer.py         the network: dialling, accepting, one ready connection per node
    tls.py          optional TLS around every connection
    keys.py         the Ed25519 node keys the handshake signs with
    clusterconf.py  the [cluster] and [remotify] tables of the node's TOML file

What a request means (remotify, remote gets, foreign pools) is RAMster's
side, ramster.py and the modules it composes; it calls Zcache through its
public operations and the network through PeerNetwork.request.
"""
