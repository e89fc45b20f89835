"""TLS fixtures for the STARTTLS, SMTPS, AUTH and interoperability tests.

What lives here: one test certificate authority made with ``trustme`` (once per test run), the
server and client :class:`ssl.SSLContext` fixtures built from it, a client certificate for mutual
TLS, and the same material as PEM files for external programs (swaks, openssl, HAProxy).

Test modules load this file as a plugin, ``pytest_plugins = ["tests.tls_fixtures"]``, and never
import it (pytest must be the first to import a plugin, to rewrite its asserts). What must not
live here: tests, client helpers (they are in :mod:`tests.tls_support`), and any fixture that
starts a server.
"""

from __future__ import annotations

import ssl

import pytest
import trustme

from tests.tls_support import CLIENT_IDENTITY, SERVER_NAME, PemFiles


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The certificate authority every test certificate comes from."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(tls_ca: trustme.CA) -> trustme.LeafCert:
    """The server certificate, valid for 127.0.0.1 and localhost."""
    return tls_ca.issue_cert(SERVER_NAME, "localhost")


@pytest.fixture(scope="session")
def client_cert(tls_ca: trustme.CA) -> trustme.LeafCert:
    """A client certificate for mutual TLS."""
    return tls_ca.issue_cert(CLIENT_IDENTITY, common_name="test client")


@pytest.fixture
def server_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context with the test certificate that does not ask for client certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def mutual_server_context(tls_ca: trustme.CA, server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context that asks for (but does not require) a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    tls_ca.configure_trust(context)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


@pytest.fixture
def client_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts the test authority."""
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    return context


@pytest.fixture
def client_context_with_cert(tls_ca: trustme.CA, client_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A verifying client context that also presents the client certificate."""
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    client_cert.configure_cert(context)
    return context


@pytest.fixture(scope="session")
def pem_files(
    tls_ca: trustme.CA,
    server_cert: trustme.LeafCert,
    client_cert: trustme.LeafCert,
    tmp_path_factory: pytest.TempPathFactory,
) -> PemFiles:
    """The CA certificate, the server and client certificates and keys, written to PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_cert = folder / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_cert))
    server_chain = folder / "server.pem"
    server_key = folder / "server.key"
    server_combined = folder / "server-combined.pem"
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(str(server_chain), append=True)
    server_cert.private_key_pem.write_to_path(str(server_key))
    server_combined.write_bytes(server_chain.read_bytes() + server_key.read_bytes())
    client_chain = folder / "client.pem"
    client_key = folder / "client.key"
    for blob in client_cert.cert_chain_pems:
        blob.write_to_path(str(client_chain), append=True)
    client_cert.private_key_pem.write_to_path(str(client_key))
    return PemFiles(
        ca_cert=ca_cert,
        server_cert=server_chain,
        server_key=server_key,
        server_combined=server_combined,
        client_cert=client_chain,
        client_key=client_key,
    )
