#!/usr/bin/python3
# Copyright (c) 2026, livekpi authors
#
# test/ws_client.py
#	  An independent WebSocket client for the push worker's TAP tests
#	  (test/t/1*_push_*.pl), on Debian's python3-websockets.
#
#	  Every line read on stdin is sent as a text message, except commands:
#	    !binary TEXT     send TEXT as a binary frame
#	    !big N           send a text message of N bytes
#	    !stop            stop reading from the socket (a stalled reader)
#	    !read            read again
#	    !close           close normally and exit
#	  Every message received is printed as one line; the end of the
#	  connection prints {"_closed": CODE, "reason": "..."}.
#
#	  usage: ws_client.py URL [--origin O] [--no-subprotocol] [--cafile F]
#	         [--rcvbuf BYTES]

import argparse
import asyncio
import json
import socket
import ssl
import sys

import websockets


def out(obj_or_text):
    if isinstance(obj_or_text, str):
        sys.stdout.write(obj_or_text + "\n")
    else:
        sys.stdout.write(json.dumps(obj_or_text) + "\n")
    sys.stdout.flush()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--origin")
    ap.add_argument("--no-subprotocol", action="store_true")
    ap.add_argument("--cafile")
    ap.add_argument("--rcvbuf", type=int)
    args = ap.parse_args()

    kwargs = dict(max_size=None, ping_interval=None, close_timeout=2,
                  max_queue=1)
    if not args.no_subprotocol:
        kwargs["subprotocols"] = ["livekpi.v1"]
    if args.origin:
        kwargs["origin"] = args.origin
    if args.url.startswith("wss:"):
        ctx = ssl.create_default_context(cafile=args.cafile)
        ctx.check_hostname = False
        kwargs["ssl"] = ctx
    if args.rcvbuf:
        host, port = args.url.split("/")[2].rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        sock.connect((host, int(port)))
        kwargs["sock"] = sock
        # websockets would still enlarge its own buffers: keep them small
        kwargs["read_limit"] = 4096
        kwargs["max_queue"] = 1

    try:
        ws = await websockets.connect(args.url, **kwargs)
    except Exception as e:  # handshake refused
        out({"_connect_error": str(e)})
        return
    out({"_connected": True, "subprotocol": ws.subprotocol})

    reading = asyncio.Event()
    reading.set()

    async def reader():
        try:
            while True:
                await reading.wait()
                msg = await ws.recv()
                out(msg if isinstance(msg, str) else {"_binary": len(msg)})
        except websockets.ConnectionClosed as e:
            out({"_closed": e.rcvd.code if e.rcvd else 1006,
                 "reason": e.rcvd.reason if e.rcvd else ""})

    rtask = asyncio.ensure_future(reader())
    loop = asyncio.get_event_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin),
                                 sys.stdin)

    async def writer():
        while True:
            line = await stdin.readline()
            if not line:
                await asyncio.sleep(3600)
                continue
            line = line.decode().rstrip("\n")
            try:
                if line == "!close":
                    await ws.close()
                    return
                elif line == "!stop":
                    reading.clear()
                    ws.transport.pause_reading()
                elif line == "!read":
                    ws.transport.resume_reading()
                    reading.set()
                elif line.startswith("!binary "):
                    await ws.send(line[8:].encode())
                elif line.startswith("!big "):
                    await ws.send("x" * int(line[5:]))
                elif line:
                    await ws.send(line)
            except websockets.ConnectionClosed:
                return

    wtask = asyncio.ensure_future(writer())
    await rtask
    wtask.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
