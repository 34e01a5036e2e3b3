"""TLS for peer connections: mutual authentication against the cluster's own CA.

With tls_cert, tls_key and tls_ca in [cluster], every peer connection runs
inside TLS 1.2 or later, and both ends must present a certificate signed by
tls_ca (CERT_REQUIRED on the server side too). The host name is not
checked: nodes are addressed by IP and *identified* by the signed handshake
(ramster.remote.session), which binds the node number to its Ed25519 key;
TLS adds what the handshake cannot, namely that nobody in the path can read
or rewrite the pages after it. Without TLS the handshake still proves who
opened the connection.
"""
from __future__ import annotations

import ssl

from .clusterconf import ClusterConfig


def contexts(cfg: ClusterConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server, client) contexts for the cluster's TLS settings; (None, None) without TLS."""
    if not cfg.tls:
        return None, None
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        ctx.load_verify_locations(cafile=cfg.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = False
    return server, client
