"""TLS (--ssl --sslcert --sslkey) and mutual TLS (--sslca), end to end on
127.0.0.1 with certificates made at test time; the DN formatting as a table."""

import logging
import os
import ssl
import subprocess
import warnings

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.certs import make_certs
from support.clients import raw_http, upgrade_request
from support.servers import PY, ROOT, make_config, script, serving
from support.waiting import readline_within, trio_test
from wsexec.config import ConfigError
from wsexec.net.tls import client_variables, rfc4514

DUMP_ENV = """
import os
for k in sorted(os.environ):
    print(f"{k}={os.environ[k]}")
"""

ECHO = """
import sys
for line in sys.stdin:
    sys.stdout.write(line)
    sys.stdout.flush()
"""


def tls_config(handler, certs, **options):
    return make_config(handler, ssl=True, sslcert=str(certs.cert), sslkey=str(certs.key), **options)


async def wss_env(url, context, timeout=5):
    with trio.fail_after(timeout):
        async with open_websocket_url(url, ssl_context=context) as ws:
            lines = []
            try:
                while True:
                    lines.append(await ws.get_message())
            except ConnectionClosed as e:
                assert e.reason.code == 1000
    return dict(line.split("=", 1) for line in lines)


async def tls_answer(port, context, request=None, timeout=5):
    """Everything the server sends back over TLS; b"" if the handshake or the
    connection fails (a refused client certificate, for one)."""
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1", https_compatible=True)
        data = b""
        try:
            await stream.send_all(request or upgrade_request())
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and request is None:
                    break
        except trio.BrokenResourceError:
            pass
        finally:
            await tcp.aclose()
        return data


def wss(state):
    host, port = state.addresses[0]
    return f"wss://{host}:{port}/path?q=1", port


# --- the DN as mod_ssl writes it -----------------------------------------------------

@pytest.mark.parametrize("name, dn", [
    (((("countryName", "US"),), (("organizationName", "Example"),), (("commonName", "alice"),)), "CN=alice,O=Example,C=US"),
    (((("commonName", "a,b+c"),),), "CN=a\\,b\\+c"),
    (((("commonName", " lead"),),), "CN=\\ lead"),
    (((("commonName", "#x"),),), "CN=\\#x"),
    (((("commonName", "trail "),),), "CN=trail\\ "),
    (((("commonName", 'q"<>;\\'),),), 'CN=q\\"\\<\\>\\;\\\\'),
    (((("organizationalUnitName", "a"), ("commonName", "b")),), "OU=a+CN=b"),
    (((("domainComponent", "org"),), (("domainComponent", "example"),), (("userId", "u1"),)), "UID=u1,DC=example,DC=org"),
    (((("1.2.3.4", "odd"),),), "1.2.3.4=odd"),
    ((), ""),
])
def test_rfc4514(name, dn):
    assert rfc4514(name) == dn


def test_client_variables():
    cert = {
        "subject": ((("organizationName", "Example"),), (("commonName", "alice"),), (("emailAddress", "a@example.org"),)),
        "issuer": ((("commonName", "Test CA"),),),
        "serialNumber": "0A1B", "notBefore": "Jan  1 00:00:00 2030 GMT", "notAfter": "Jan  1 00:00:00 2031 GMT",
        "subjectAltName": (("email", "a@example.org"), ("DNS", "alice.example.org")),
    }
    assert client_variables(cert, "TLSv1.3", "TLS_AES_256_GCM_SHA384") == {
        "SSL_PROTOCOL": "TLSv1.3", "SSL_CIPHER": "TLS_AES_256_GCM_SHA384", "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_S_DN": "emailAddress=a@example.org,CN=alice,O=Example", "SSL_CLIENT_I_DN": "CN=Test CA",
        "SSL_CLIENT_M_SERIAL": "0A1B", "SSL_CLIENT_V_START": "Jan  1 00:00:00 2030 GMT",
        "SSL_CLIENT_V_END": "Jan  1 00:00:00 2031 GMT", "SSL_CLIENT_S_DN_CN": "alice", "SSL_CLIENT_S_DN_O": "Example",
        "SSL_CLIENT_S_DN_Email": "a@example.org", "SSL_CLIENT_SAN_Email_0": "a@example.org",
        "SSL_CLIENT_SAN_DNS_0": "alice.example.org",
    }
    assert client_variables(None, "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256") == {
        "SSL_PROTOCOL": "TLSv1.2", "SSL_CIPHER": "ECDHE-RSA-AES128-GCM-SHA256", "SSL_CLIENT_VERIFY": "NONE"}


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("options, code", [
    ({"ssl": True}, 4),
    ({"ssl": True, "sslcert": "CERT"}, 4),
    ({"sslcert": "CERT", "sslkey": "KEY"}, 4),
    ({"sslca": "CA"}, 4),
    ({"ssl": True, "sslcert": "KEY", "sslkey": "CERT"}, 1),  # swapped
    ({"ssl": True, "sslcert": "CERT", "sslkey": "MISSING"}, 1),
    ({"ssl": True, "sslcert": "CERT", "sslkey": "KEY", "sslca": "MISSING"}, 1),
])
def test_tls_options_validated(tmp_path, options, code):
    certs = make_certs(tmp_path)
    files = {"CERT": str(certs.cert), "KEY": str(certs.key), "CA": str(certs.cacert), "MISSING": str(tmp_path / "nope")}
    handler = script(tmp_path, "h.py", "print('x')\n")
    with pytest.raises(ConfigError) as e:
        make_config(handler, **{k: files.get(v, v) for k, v in options.items()})
    assert e.value.exit_code == code


# --- end to end ------------------------------------------------------------------------------

@trio_test(20)
async def test_wss_environment_and_echo(tmp_path):
    certs = make_certs(tmp_path)
    env_handler = script(tmp_path, "env.py", DUMP_ENV)
    async with serving(tls_config(env_handler, certs)) as (state, _):
        url, port = wss(state)
        env = await wss_env(url, certs.client_context())
    assert env["HTTPS"] == "on" and env["SERVER_PORT"] == str(port)
    assert env["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3") and env["SSL_CIPHER"]
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and "SSL_CLIENT_S_DN" not in env
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["QUERY_STRING"] == "q=1"
    echo = script(tmp_path, "echo.py", ECHO)
    big = "x" * 300_000 + "é"
    async with serving(tls_config(echo, certs, maxmessage=1 << 20)) as (state, _):
        url, _ = wss(state)
        with trio.fail_after(10):
            async with open_websocket_url(url, ssl_context=certs.client_context()) as ws:
                for message in ("hello", big, "again"):
                    await ws.send_message(message)
                    assert await ws.get_message() == message


@trio_test(20)
async def test_mutual_tls_passes_the_client_subject(tmp_path):
    certs = make_certs(tmp_path)
    handler = script(tmp_path, "env.py", DUMP_ENV)
    config = tls_config(handler, certs, sslca=str(certs.cacert))
    alice = certs.client_cert("alice", "Example, Inc.")
    async with serving(config) as (state, _):
        url, _ = wss(state)
        env = await wss_env(url, certs.client_context(alice))
        assert env["SSL_CLIENT_VERIFY"] == "SUCCESS" and env["SSL_CLIENT_S_DN_CN"] == "alice"
        # The same strings as OpenSSL's RFC 2253 printing (what mod_ssl uses).
        pem = tmp_path / "alice.pem"
        alice.cert_chain_pems[0].write_to_path(str(pem))
        for flag, key in (("-subject", "SSL_CLIENT_S_DN"), ("-issuer", "SSL_CLIENT_I_DN")):
            out = subprocess.run(["openssl", "x509", "-in", str(pem), "-noout", flag, "-nameopt", "RFC2253"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            assert env[key] == out.strip().split("=", 1)[1], key
        assert env["SSL_CLIENT_S_DN"].startswith("CN=alice,") and "O=Example\\, Inc." in env["SSL_CLIENT_S_DN"]
        assert env["HTTPS"] == "on"
        # No certificate, or one from another CA: the handshake fails, no handler runs.
        stranger = make_certs(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)
        for context in (certs.client_context(), certs.client_context(stranger.client_cert("mallory"))):
            assert await tls_answer(state.addresses[0][1], context) == b""
        # ... and the server is still fine.
        assert (await wss_env(url, certs.client_context(alice)))["SSL_CLIENT_S_DN_CN"] == "alice"


@trio_test(20)
async def test_plain_http_and_stalled_handshakes_do_not_block_others(tmp_path, caplog):
    certs = make_certs(tmp_path)
    handler = script(tmp_path, "env.py", DUMP_ENV)
    async with serving(tls_config(handler, certs, handshakems=1000)) as (state, _):
        url, port = wss(state)
        with trio.fail_after(10):
            # A client that connects and says nothing holds no one else up...
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            garbage = await trio.open_tcp_stream("127.0.0.1", port)
            await garbage.send_all(b"\x16\x03\x01\x00\x05hello")  # a broken ClientHello
            env = await wss_env(url, certs.client_context())
            assert env["HTTPS"] == "on"
            # ... and is dropped after --handshakems.
            started = trio.current_time()
            assert await silent.receive_some(10) == b""
            assert trio.current_time() - started < 2
            await silent.aclose()
            await garbage.aclose()
            # Plain HTTP on the TLS port gets a plain answer.
            answer = await raw_http(port, upgrade_request())
            assert answer.startswith(b"HTTP/1.1 400 ") and b"TLS" in answer
            assert (await wss_env(url, certs.client_context()))["HTTPS"] == "on"


@trio_test(20)
async def test_old_tls_versions_are_refused(tmp_path, caplog):
    certs = make_certs(tmp_path)
    handler = script(tmp_path, "env.py", DUMP_ENV)
    async with serving(tls_config(handler, certs)) as (state, _):
        url, port = wss(state)
        context = certs.client_context()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
        with caplog.at_level(logging.DEBUG, logger="wsexec"):
            assert await tls_answer(port, context) == b""
            await trio.sleep(0.1)
        # The server saw the hello and refused the version (not the client refusing itself).
        assert any("TLS handshake failed" in r.getMessage() and "PROTOCOL" in r.getMessage().upper()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        context = certs.client_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        assert (await wss_env(url, context))["SSL_PROTOCOL"] == "TLSv1.2"


@trio_test(20)
async def test_static_files_over_tls(tmp_path):
    """sendfile(2) cannot write TLS: the file is encrypted like everything else."""
    certs = make_certs(tmp_path)
    handler = script(tmp_path, "env.py", DUMP_ENV)
    site = tmp_path / "site"
    site.mkdir()
    body = os.urandom(200_000)
    (site / "blob.bin").write_bytes(body)
    async with serving(tls_config(handler, certs, staticdir=str(site))) as (state, _):
        port = state.addresses[0][1]
        data = await tls_answer(port, certs.client_context(),
                                b"GET /blob.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    head, _, got = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and got == body


def test_wsexec_process_prints_wss(tmp_path):
    certs = make_certs(tmp_path)
    handler = script(tmp_path, "env.py", DUMP_ENV)
    argv = [PY, "-m", "wsexec", "--port", "0", "--address", "127.0.0.1", "--ssl", "--sslcert", str(certs.cert),
            "--sslkey", str(certs.key), str(handler)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = readline_within(proc.stdout, 10).decode().strip()
        assert line.startswith("listening on wss://127.0.0.1:"), line
        url = line.split(" ")[-1]
        env = trio.run(wss_env, url, certs.client_context())
        assert env["HTTPS"] == "on"
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([PY, "-m", "wsexec", "--port", "0", "--ssl", str(handler)], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=20)
    assert bad.returncode == 4 and b"--sslcert" in bad.stderr
