from helpers import collect, make_config, serving, trio_test


@trio_test(10)
async def test_cat_echoes_and_closes_1000_on_exit(tmp_path):
    async with serving(make_config("cat")) as (state, url):
        from trio_websocket import open_websocket_url

        async with open_websocket_url(url + "/") as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
