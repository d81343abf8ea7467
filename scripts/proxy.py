"""A TCP proxy that adds latency to each request and can drop some: network
conditions for one machine (this kernel has no netem).

    python scripts/proxy.py UPSTREAM_PORT [--delay-ms D] [--fail-every N] [--port P]

Prints the port it listens on (first line), then serves until killed. A
"request" is each burst of bytes from the client after the server has
answered (HTTP keep-alive requests on one connection included): it waits D
ms before being forwarded. With --fail-every N, every Nth request's
connection is reset instead (both sides closed), as a flaky network or an
overloaded server would. Counts go to stderr on exit.
"""

import argparse
import asyncio
import signal
import socket
import sys


class Stats:
    requests = 0
    failed = 0


async def pipe(reader, writer, on_chunk=None):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            if on_chunk is not None and not await on_chunk():
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_r, client_w, args, stats):
    try:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", args.upstream)
    except OSError:
        client_w.close()
        return
    # A new request starts when the client sends after the server answered.
    state = {"answered": True}

    async def client_chunk():
        if state["answered"]:
            state["answered"] = False
            stats.requests += 1
            if args.fail_every and stats.requests % args.fail_every == 0:
                stats.failed += 1
                for w in (client_w, up_w):
                    sock = w.get_extra_info("socket")
                    if sock is not None:
                        # RST rather than FIN: the client sees a reset.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    w.close()
                return False
            if args.delay_ms:
                await asyncio.sleep(args.delay_ms / 1000)
        return True

    async def server_chunk():
        state["answered"] = True
        return True

    try:
        await asyncio.gather(pipe(client_r, up_w, client_chunk), pipe(up_r, client_w, server_chunk))
    except asyncio.CancelledError:
        pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("upstream", type=int)
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    stats = Stats()
    server = await asyncio.start_server(lambda r, w: handle(r, w, args, stats), "127.0.0.1", args.port)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"proxy: {stats.requests} requests, {stats.failed} reset", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
