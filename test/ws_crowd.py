#!/usr/bin/python3
# Copyright (c) 2026, livekpi authors
#
# test/ws_crowd.py
#	  Many WebSocket clients in one process, for the push worker's load
#	  tests (test/t/108_push_memory.pl, 109_push_storm.pl), with a minimal
#	  RFC 6455 client of its own (asyncio streams, masked frames) so that
#	  thousands of connections cost little.
#
#	  usage: ws_crowd.py HOST PORT N TOKEN [--batch B]
#	  Opens N connections, B at a time, each sending hello at once; prints
#	  {"connected": n, "snapshots": n, "failed": n} once every connection
#	  has its snapshot (or failed), then keeps reading (and answering
#	  pings) until stdin closes, then prints {"open": n} (connections still
#	  open) and exits.
#
#	  usage: ws_crowd.py HOST PORT --raw CASE
#	  One hand-made handshake or frame (RFC 6455 strictness tests); prints
#	  {"status": HTTP status, "headers": {...}} for handshake cases and
#	  {"close": code} (or {"close": null} when the socket just closed)
#	  for frame cases.  CASE: version99, nokey, badkey, shortkey,
#	  unmasked, masked, foreign-origin-forged-host, own-origin.

import asyncio
import base64
import json
import os
import resource
import struct
import sys


def handshake(host, port, key=None, version='13', origin=None, hosthdr=None):
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode()
    lines = ['GET /v1/stream HTTP/1.1',
             'Host: %s' % (hosthdr or '%s:%d' % (host, port)),
             'Upgrade: websocket', 'Connection: Upgrade',
             'Sec-WebSocket-Protocol: livekpi.v1']
    if key != '':
        lines.append('Sec-WebSocket-Key: %s' % key)
    if version is not None:
        lines.append('Sec-WebSocket-Version: %s' % version)
    if origin:
        lines.append('Origin: %s' % origin)
    return ('\r\n'.join(lines) + '\r\n\r\n').encode()


def frame(payload, opcode=1, masked=True):
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack('!H', n)
    else:
        head += bytes([mbit | 127]) + struct.pack('!Q', n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_response(reader):
    head = await reader.readuntil(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        if ':' in l:
            k, v = l.split(':', 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_frame(reader):
    b = await reader.readexactly(2)
    opcode = b[0] & 0x0f
    n = b[1] & 0x7f
    if n == 126:
        n = struct.unpack('!H', await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack('!Q', await reader.readexactly(8))[0]
    return opcode, await reader.readexactly(n)


class Crowd:
    def __init__(self):
        self.connected = 0
        self.snapshots = 0
        self.failed = 0
        self.open = 0
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

    def check(self, n):
        if self.snapshots + self.failed >= n:
            self.ready.set()


async def one(host, port, token, crowd, n):
    counted = False
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(handshake(host, port))
        status, _ = await read_response(reader)
        if status != 101:
            raise RuntimeError('status %d' % status)
        crowd.connected += 1
        crowd.open += 1
        writer.write(frame(json.dumps({'type': 'hello', 'token': token}).encode()))
        while True:
            if crowd.stop.is_set():
                break
            try:
                opcode, payload = await asyncio.wait_for(read_frame(reader), 0.5)
            except asyncio.TimeoutError:
                continue
            if opcode == 9:
                writer.write(frame(payload, opcode=10))
            elif opcode == 8:
                break
            elif opcode == 1 and not counted and b'"type":"snapshot"' in payload:
                counted = True
                crowd.snapshots += 1
                crowd.check(n)
        crowd.open -= 1
        writer.close()
    except Exception:
        pass
    if not counted:
        crowd.failed += 1
        crowd.check(n)


async def crowd_main(host, port, n, token, batch):
    crowd = Crowd()
    loop = asyncio.get_running_loop()
    tasks = []
    for i in range(0, n, batch):
        for _ in range(min(batch, n - i)):
            tasks.append(asyncio.create_task(one(host, port, token, crowd, n)))
        await asyncio.sleep(0)
    await crowd.ready.wait()
    print(json.dumps({'connected': crowd.connected, 'snapshots': crowd.snapshots,
                      'failed': crowd.failed}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    open_now = crowd.open
    crowd.stop.set()
    print(json.dumps({'open': open_now}), flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


async def raw_main(host, port, case):
    reader, writer = await asyncio.open_connection(host, port)
    kw = {}
    if case == 'version99':
        kw['version'] = '99'
    elif case == 'nokey':
        kw['key'] = ''
    elif case == 'badkey':
        kw['key'] = '!!!!not-base64-at-all!!!'
    elif case == 'shortkey':
        kw['key'] = base64.b64encode(b'short').decode()
    elif case == 'foreign-origin-forged-host':
        kw['origin'] = 'http://evil.example'
        kw['hosthdr'] = 'evil.example'
    elif case == 'own-origin':
        kw['origin'] = 'http://%s:%d' % (host, port)
    writer.write(handshake(host, port, **kw))
    try:
        status, headers = await asyncio.wait_for(read_response(reader), 10)
    except Exception:
        print(json.dumps({'status': None}), flush=True)
        return
    if case not in ('unmasked', 'masked'):
        print(json.dumps({'status': status, 'headers': headers}), flush=True)
        return
    writer.write(frame(b'{"type":"nope","token":"x"}' if case == 'masked'
                       else b'{"type":"hello","token":"x"}', masked=(case == 'masked')))
    code = None
    try:
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
            if opcode == 8:
                code = struct.unpack('!H', payload[:2])[0] if len(payload) >= 2 else None
                break
    except Exception:
        pass
    print(json.dumps({'close': code}), flush=True)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = sys.argv[1], int(sys.argv[2])
    if sys.argv[3] == '--raw':
        asyncio.run(raw_main(host, port, sys.argv[4]))
        return
    n, token = int(sys.argv[3]), sys.argv[4]
    batch = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == '--batch' else 200
    asyncio.run(crowd_main(host, port, n, token, batch))


if __name__ == '__main__':
    main()
