"""Certificates made at test time (trustme): a CA, a server certificate for
127.0.0.1 / ::1 / localhost, and client certificates for mutual TLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import trustme


@dataclass
class Certs:
    ca: trustme.CA
    cacert: Path  # PEM of the CA, for --sslca and clients
    cert: Path  # server chain, for --sslcert
    key: Path  # server key, for --sslkey
    both: Path  # key + chain in one file (haproxy's crt)
    directory: Path

    def client_context(self, client: Optional[trustme.LeafCert] = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if client is not None:
            client.configure_cert(context)
        return context

    def client_cert(self, name: str = "alice", organization: str = "Example, Inc.") -> trustme.LeafCert:
        return self.ca.issue_cert(f"{name}@example.org", common_name=name, organization_name=organization)


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA(organization_name="wsexec test CA")
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "both")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=i > 0)
    server.private_key_pem.write_to_path(str(paths["key"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["both"]))
    return Certs(ca, paths["ca"], paths["cert"], paths["key"], paths["both"], directory)
