#!/usr/bin/env python3
"""Anonymous publish heads against the public DB while a station publishes and a reader reads
(python3 standard library only; the attack of /work/att12 body_budget.sh, finding 1).

--count TLS connections spread over --sources, no client certificate, each sends the head of a
POST /v1/records with Content-Length --cl and then trickles its body one byte every --every seconds,
re-opening when the server closes it. A server that counts those bodies against its buffer budget
before knowing who sends them has no budget left for anyone else: station publishes and reads get
503 busy. Meanwhile, from --station-source, a station re-publishes --record (200 or 201 expected)
and reads --read-url (200 expected) every --probe-every seconds, each on a fresh connection.

Prints what the hostile connections were answered and the station's statuses; exits 1 when a station
publish or read got anything else, when too few hostile connections were opened, or when the
server's --ops /metrics showed more than --max-buffered bytes buffered during the attack.
"""

import argparse
import asyncio
import collections
import http.client
import os
import resource
import ssl
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flood  # noqa: E402  (parse_sources, insecure_context)


async def hostile(a, src, st):
    while time.monotonic() < a.end:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(a.host, a.port, local_addr=(src, 0), ssl=flood.insecure_context(),
                                        server_hostname=a.host), 10)
        except Exception:
            st["open_failed"] += 1
            await asyncio.sleep(0.2)
            continue
        st["opened"] += 1
        try:
            w.write(f"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {a.cl}\r\n\r\n".encode())
            while time.monotonic() < a.end:
                w.write(b"a")
                await w.drain()
                try:
                    d = await asyncio.wait_for(r.read(4096), a.every)
                except asyncio.TimeoutError:
                    continue
                st["answers"][d.split(b"\r\n", 1)[0].decode(errors="replace") if d else "(closed)"] += 1
                break
        except Exception:
            st["answers"]["(reset)"] += 1
        finally:
            w.transport.abort()


def buffered_bytes(ops):
    with urllib.request.urlopen(f"http://{ops}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("keyline_backupdb_buffered_bytes "):
                return int(float(line.split()[1]))
    return -1


def station(a, results, stop):
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(a.cert, a.key)
    reader = ssl.create_default_context(cafile=a.ca)
    reader.check_hostname = False
    with open(a.record, "rb") as f:
        body = f.read()
    while not stop.is_set():
        for what, context, method, path, data in (("publish", ctx, "POST", "/v1/records", body),
                                                  ("read", reader, "GET", a.read_path, None)):
            try:
                c = http.client.HTTPSConnection(a.host, a.port, context=context, timeout=5,
                                                source_address=(a.station_source, 0))
                headers = {"Content-Type": "application/json"} if data else {}
                c.request(method, path, body=data, headers=headers)
                resp = c.getresponse()
                resp.read()
                results[what][resp.status] += 1
                c.close()
            except Exception as e:  # a reset or a timeout is a failure too
                results[what][type(e).__name__] += 1
        try:
            results["buffered"].append(buffered_bytes(a.ops))
        except Exception:
            pass
        stop.wait(a.probe_every)


async def main_async(a):
    srcs = flood.parse_sources(a.sources)
    st = {"opened": 0, "open_failed": 0, "answers": collections.Counter()}
    tasks = [asyncio.create_task(hostile(a, srcs[i % len(srcs)], st)) for i in range(a.count)]
    await asyncio.sleep(2)  # the hostile heads are in before the station starts
    results = {"publish": collections.Counter(), "read": collections.Counter(), "buffered": []}
    stop = threading.Event()
    t = threading.Thread(target=station, args=(a, results, stop))
    t.start()
    await asyncio.wait(tasks, timeout=a.seconds + 5)
    stop.set()
    for task in tasks:
        task.cancel()
    t.join()
    return st, results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--ops", required=True, help="the operations listener, for keyline_backupdb_buffered_bytes")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--sources", default="127.0.1.1-127.0.1.8")
    ap.add_argument("--cl", type=int, default=262144)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--read-path", required=True)
    ap.add_argument("--station-source", default="127.0.0.3")
    ap.add_argument("--probe-every", type=float, default=0.5)
    ap.add_argument("--max-buffered", type=int, default=8 * 1024 * 1024)
    a = ap.parse_args()
    a.host, _, port = a.target.rpartition(":")
    a.port = int(port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    a.end = time.monotonic() + 2 + a.seconds
    st, results = asyncio.run(main_async(a))
    peak = max(results["buffered"], default=-1)
    print(f"hostile x{a.count} (Content-Length {a.cl}, no certificate): opened {st['opened']} "
          f"open_failed {st['open_failed']}; answers {dict(st['answers'])}")
    print(f"station publishes {dict(results['publish'])}, reads {dict(results['read'])}, "
          f"buffered bytes peak {peak}")
    ok = True
    if st["opened"] < a.count:
        print("FAIL fewer hostile connections opened than asked for")
        ok = False
    bad_pub = {k: v for k, v in results["publish"].items() if k not in (200, 201)}
    bad_read = {k: v for k, v in results["read"].items() if k != 200}
    if bad_pub or bad_read or not results["publish"] or not results["read"]:
        print(f"FAIL the station was not served: publishes {dict(bad_pub)} reads {dict(bad_read)}")
        ok = False
    if peak < 0 or peak > a.max_buffered:
        print(f"FAIL buffered bytes peak {peak} (at most {a.max_buffered})")
        ok = False
    sys.exit(0 if ok else 1)


main()
