"""asyncio glue around Debian's python3-websockets 10.4 (harness.aio): that
version has no sync client, so tests run coroutines with run() and call the
blocking harness (API requests, tether-dump) through in_thread()."""
import asyncio
import json
import time

import websockets


def run(coro, timeout=30):
    """Run one test coroutine, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(url, **kw):
    """A python3-websockets client on url (5 s open and close timeouts)."""
    return await websockets.connect(url, open_timeout=5, close_timeout=5, **kw)


async def connect_user(group, user, **kw):
    """A python3-websockets client of group as user (token signed by the harness)."""
    return await websockets.connect(group.ws_url(user), max_size=2 ** 20, **kw)


async def app_ping(ws):
    """Send {"type":"ping"}; return the next message, parsed."""
    await ws.send(json.dumps({"type": "ping"}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def in_thread(fn, *args, **kw):
    """Run a blocking harness call (API request, dump) without stalling the clients."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kw))


async def api(group, *args, **kw):
    return await in_thread(group.api, *args, **kw)


async def notify(group, user, data=None, nid=None, type_="meal_log.completed"):
    return await in_thread(group.notify, user, data, type_, nid)


async def wait_for(pred, timeout=10, interval=0.05):
    """Poll pred until true or timeout; returns its last truth value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if pred():
            return True
        await asyncio.sleep(interval)
    return bool(pred())


async def wait_connected(group, user, count, timeout=5):
    """Wait until presence shows count connections of user; returns the presence body."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, body = await api(group, "GET", "/v1/presence/" + user)
        if st == 200 and len(body["connections"]) == count:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("%s never had %d connections" % (user, count))


async def nothing_more(ws, wait=0.3):
    """True when nothing arrives within wait seconds (raises on a frame)."""
    try:
        msg = await asyncio.wait_for(ws.recv(), wait)
    except asyncio.TimeoutError:
        return True
    raise AssertionError("unexpected frame %s" % msg)
