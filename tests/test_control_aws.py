"""The control API's /@connections, driven by the real boto3
`apigatewaymanagementapi` client: code written for AWS API Gateway's WebSocket
management API, pointed at wsexec's control port.

boto3 is synchronous: its calls run in a thread (trio.to_thread.run_sync)
beside an in-process wsexec on 127.0.0.1; every wait has a ceiling."""

import datetime
import functools

import boto3
import botocore.config
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.servers import make_config, script, serving
from support.waiting import trio_test, wait_until

HANDLER = """
import os, sys
print(os.environ["WSEXEC_CONNECTION_ID"], flush=True)
for line in sys.stdin:
    print("echo " + line, end="", flush=True)
"""

USER_AGENT = "deploy-test/1.0 (boto3)"


def management_client(endpoint: str):
    return boto3.client(
        "apigatewaymanagementapi", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="x",
        # no retries: a wrong answer shows as it is; short timeouts: every wait has a ceiling
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10),
    )


async def in_thread(fn, *args, **kwargs):
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def gone(client, method: str, **kwargs) -> bool:
    """True if the call raised the client's GoneException."""
    try:
        await in_thread(getattr(client, method), **kwargs)
    except client.exceptions.GoneException:
        return True
    return False


@trio_test(40)
async def test_boto3_post_get_and_delete_connection(tmp_path):
    handler = script(tmp_path, "id.py", HANDLER)
    async with serving(make_config(handler, control="127.0.0.1:0")) as (state, url):
        client = await in_thread(management_client, state.shared.control_url)
        async with open_websocket_url(url + "/aws", extra_headers=[(b"User-Agent", USER_AGENT.encode())]) as ws:
            with trio.fail_after(10):
                conn_id = await ws.get_message()

            # post_to_connection: the data reaches the client as one message;
            # UTF-8 data (boto3 sends no Content-Type) as text, anything else as binary.
            answer = await in_thread(client.post_to_connection, ConnectionId=conn_id, Data=b"hello")
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
            with trio.fail_after(5):
                assert await ws.get_message() == "hello"
            await in_thread(client.post_to_connection, ConnectionId=conn_id, Data="héllo".encode())
            await in_thread(client.post_to_connection, ConnectionId=conn_id, Data=b"\x00\xff")
            with trio.fail_after(5):
                assert await ws.get_message() == "héllo"
                assert await ws.get_message() == b"\x00\xff"
            # The handler is still there and in step.
            with trio.fail_after(5):
                await ws.send_message("one")
                assert await ws.get_message() == "echo one"

            # get_connection: datetimes and the identity, parsed by botocore.
            info = await in_thread(client.get_connection, ConnectionId=conn_id)
            now = datetime.datetime.now(datetime.timezone.utc)
            connected, last = info["ConnectedAt"], info["LastActiveAt"]
            assert isinstance(connected, datetime.datetime) and isinstance(last, datetime.datetime)
            assert connected.tzinfo is not None and last.tzinfo is not None
            # the sessions' clock ticks once a second
            assert now - datetime.timedelta(seconds=30) <= connected <= last <= now + datetime.timedelta(seconds=2)
            assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": USER_AGENT}

            # delete_connection: the client gets a normal close.
            await in_thread(client.delete_connection, ConnectionId=conn_id)
            with trio.fail_after(10):
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as e:
                    assert e.reason.code == 1000, e.reason

        # Once its handler is gone the id is gone for every call.
        await wait_until(lambda: gone(client, "get_connection", ConnectionId=conn_id), 10, "the id gone", 0.05)
        assert await gone(client, "post_to_connection", ConnectionId=conn_id, Data=b"late")
        assert await gone(client, "delete_connection", ConnectionId=conn_id)


@trio_test(30)
async def test_boto3_unknown_connection_is_gone(tmp_path):
    handler = script(tmp_path, "id.py", HANDLER)
    async with serving(make_config(handler, control="127.0.0.1:0")) as (state, url):
        client = await in_thread(management_client, state.shared.control_url)
        for unknown in ("0123abcd1", "nosuchconnection"):
            assert await gone(client, "get_connection", ConnectionId=unknown)
            assert await gone(client, "post_to_connection", ConnectionId=unknown, Data=b"hello")
            assert await gone(client, "delete_connection", ConnectionId=unknown)
        with pytest.raises(client.exceptions.GoneException) as raised:
            await in_thread(client.get_connection, ConnectionId="nosuchconnection")
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410
        assert raised.value.response["Error"]["Code"] == "GoneException"
        assert "nosuchconnection" in raised.value.response["Error"]["Message"]


@trio_test(30)
async def test_boto3_with_a_stage_in_the_endpoint(tmp_path):
    """Code written for AWS is given https://API.execute-api.REGION.amazonaws.com/STAGE:
    the SDK then asks for /STAGE/@connections/ID."""
    handler = script(tmp_path, "id.py", HANDLER)
    async with serving(make_config(handler, control="127.0.0.1:0")) as (state, url):
        client = await in_thread(management_client, state.shared.control_url + "/production")
        async with open_websocket_url(url + "/staged") as ws:
            with trio.fail_after(10):
                conn_id = await ws.get_message()
            await in_thread(client.post_to_connection, ConnectionId=conn_id, Data=b"staged hello")
            with trio.fail_after(5):
                assert await ws.get_message() == "staged hello"
            info = await in_thread(client.get_connection, ConnectionId=conn_id)
            assert info["Identity"]["SourceIp"] == "127.0.0.1"
            await in_thread(client.delete_connection, ConnectionId=conn_id)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
            assert closed.value.reason.code == 1000
        assert await gone(client, "get_connection", ConnectionId="nosuchconnection")


@trio_test(30)
async def test_boto3_errors_have_their_aws_names(tmp_path):
    """AWS-made ids are gone, not malformed; an oversized push is PayloadTooLargeException."""
    handler = script(tmp_path, "id.py", HANDLER)
    async with serving(make_config(handler, control="127.0.0.1:0", maxmessage=1024)) as (state, url):
        client = await in_thread(management_client, state.shared.control_url)
        assert await gone(client, "get_connection", ConnectionId="L0SM9cOFvHcCIhw=")
        assert await gone(client, "post_to_connection", ConnectionId="L0SM9cOFvHcCIhw=", Data=b"x")
        async with open_websocket_url(url + "/big") as ws:
            with trio.fail_after(10):
                conn_id = await ws.get_message()
            with pytest.raises(client.exceptions.PayloadTooLargeException) as raised:
                await in_thread(client.post_to_connection, ConnectionId=conn_id, Data=b"x" * 2048)
            assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
            assert "1024" in raised.value.response["Error"]["Message"]
