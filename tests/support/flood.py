#!/usr/bin/env python3
"""Slow-client flood against an HTTP(S) server, with a latency probe (python3 standard library only).

Holds three kinds of hostile connections open for --seconds, spread over --sources, re-opening any
the server closes so the pressure never lets up:
  slow-header     a valid request line, then one header byte a second (over TLS with --tls)
  silent          TCP connect, then nothing
  slow-handshake  the 5-byte record header of a TLS ClientHello, then one byte a second
Meanwhile a probe does a fresh GET of --probe (its own connection, from --probe-source) every
--probe-every seconds. Prints probes sent/answered/failed, p50/p99/max latency, and how many hostile
connections the server closed and when. Exits 1 when a probe failed, p99 exceeds --p99-max-ms, or
fewer hostile connections of a kind were ever opened than asked for (a flood that never held its
connections proves nothing). A probe is answered when a complete HTTP response with a status below
500 (exactly --expect-status when given) arrives within --probe-timeout seconds.

Example (docs/decisions.md, "The servers' own acceptor"):
  flood.py --target 127.0.0.1:8443 --tls --slow-header 200 --silent 200 --slow-handshake 200 \\
      --seconds 20 --sources 127.0.0.10-127.0.0.40 --probe https://127.0.0.1:8443/v1/records/x \\
      --probe-ca ca.pem --probe-every 0.2 --p99-max-ms 100 --probe-source 127.0.0.2
"""

import argparse
import asyncio
import collections
import ipaddress
import multiprocessing
import os
import resource
import ssl
import sys
import time
import urllib.parse


def parse_sources(text):
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            first, last = (ipaddress.ip_address(p.strip()) for p in part.split("-", 1))
            if int(last) < int(first):
                raise SystemExit(f"bad source range {part}")
            out.extend(str(ipaddress.ip_address(i)) for i in range(int(first), int(last) + 1))
        elif part:
            out.append(str(ipaddress.ip_address(part)))
    if not out:
        raise SystemExit("no source addresses")
    return out


class Tally:
    """What happened to the hostile connections, by kind."""

    def __init__(self, start):
        self.start = start
        self.opened = collections.Counter()
        self.open_failed = collections.Counter()
        self.closed = collections.Counter()
        self.close_times = collections.defaultdict(list)  # kind -> seconds since start
        self.open_times = collections.defaultdict(list)

    def open(self, kind):
        self.opened[kind] += 1
        self.open_times[kind].append(time.monotonic() - self.start)

    def close(self, kind):
        self.closed[kind] += 1
        self.close_times[kind].append(time.monotonic() - self.start)


_INSECURE = None


def insecure_context():
    """One shared context: building one loads the system CA store, tens of ms that block the loop."""
    global _INSECURE
    if _INSECURE is None:
        _INSECURE = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _INSECURE.check_hostname = False
        _INSECURE.verify_mode = ssl.CERT_NONE
    return _INSECURE


async def wait_closed_or(reader, seconds):
    """True when the server closed (EOF or error) within `seconds`."""
    try:
        data = await asyncio.wait_for(reader.read(4096), seconds)
        return data == b""
    except asyncio.TimeoutError:
        return False
    except (ConnectionError, OSError, ssl.SSLError):
        return True


async def hostile_once(kind, args, source, tally):
    host, port = args.host, args.port
    use_tls = kind == "slow-header" and args.tls
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0),
                                    ssl=insecure_context() if use_tls else None,
                                    server_hostname=host if use_tls else None),
            10)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        tally.open_failed[kind] += 1
        await asyncio.sleep(0.2)
        return
    tally.open(kind)
    try:
        if kind == "slow-header":
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n".encode())
            trickle = b"X-Slow: " + b"a" * 100000
        elif kind == "slow-handshake":
            writer.write(b"\x16\x03\x01\x02\x00")  # handshake record, 512 bytes announced
            trickle = b"\x01\x00\x01\xfc\x03\x03" + os.urandom(4096)
        else:
            trickle = b""
        for i in range(len(trickle) if trickle else 1 << 30):
            if time.monotonic() >= args.end:
                return
            if trickle:
                writer.write(trickle[i:i + 1])
                await writer.drain()
            if await wait_closed_or(reader, 1.0):
                tally.close(kind)
                return
    except (ConnectionError, OSError, ssl.SSLError):
        tally.close(kind)
    finally:
        writer.transport.abort()


async def hostile(kind, args, source, tally):
    while time.monotonic() < args.end:
        await hostile_once(kind, args, source, tally)


async def probe_once(args, ctx, latencies, failures):
    url = args.probe_url
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, url.port or (443 if url.scheme == "https" else 80),
                                    local_addr=(args.probe_source, 0) if args.probe_source else None,
                                    ssl=ctx, server_hostname=url.hostname if ctx else None),
            args.probe_timeout)
        try:
            path = (url.path or "/") + (("?" + url.query) if url.query else "")
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), args.probe_timeout)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            left = args.probe_timeout - (time.monotonic() - start)
            await asyncio.wait_for(reader.readexactly(length), max(left, 0.001))
        finally:
            writer.transport.abort()
        if status >= 500 or (args.expect_status and status != args.expect_status):
            failures.append(f"status {status}" + (f", want {args.expect_status}" if args.expect_status else ""))
            return
        latencies.append((time.monotonic() - start) * 1000.0)
    except Exception as e:  # any failure of a probe counts, whatever it is
        failures.append(f"{type(e).__name__}: {e}")


async def probes(args, latencies, failures):
    ctx = None
    if args.probe_url.scheme == "https":
        ctx = ssl.create_default_context(cafile=args.probe_ca) if args.probe_ca else insecure_context()
    tasks = []
    n = 0
    while True:
        due = args.start + n * args.probe_every
        if due >= args.end:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(probe_once(args, ctx, latencies, failures)))
        n += 1
    await asyncio.gather(*tasks)
    return n


def percentile(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def timeline(times, seconds):
    """Closes per second, as 'second:count' for the seconds that had any."""
    buckets = collections.Counter(int(t) for t in times)
    return " ".join(f"{s}s:{buckets[s]}" for s in range(int(seconds) + 1) if buckets[s])


def probe_process(args, conn):
    """The probe in a process of its own, so the flood's own work never shows up as server latency."""
    latencies, failures = [], []
    sent = asyncio.run(probes(args, latencies, failures))
    conn.send((sent, latencies, failures))
    conn.close()


async def main_async(args, probe, conn):
    sources = parse_sources(args.sources)
    await asyncio.sleep(max(0.0, args.start - time.monotonic()))
    tally = Tally(args.start)
    kinds = [("slow-header", args.slow_header), ("silent", args.silent), ("slow-handshake", args.slow_handshake)]
    hostiles = []
    i = 0
    for kind, count in kinds:
        for _ in range(count):
            hostiles.append(asyncio.create_task(hostile(kind, args, sources[i % len(sources)], tally)))
            i += 1
    await asyncio.wait(hostiles, timeout=args.seconds + 3)
    for t in hostiles:
        t.cancel()
    loop = asyncio.get_running_loop()
    ready = await loop.run_in_executor(None, conn.poll, args.probe_timeout + 5)
    sent, latencies, failures = conn.recv() if ready else (0, [], ["the probe process sent no result"])
    probe.join(5)
    return report(args, tally, kinds, sent, latencies, failures)


def report(args, tally, kinds, sent, latencies, failures):
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    worst = max(latencies) if latencies else float("nan")
    print(f"probes sent {sent} answered {len(latencies)} failed {len(failures)}")
    print(f"probe latency ms p50 {p50:.1f} p99 {p99:.1f} max {worst:.1f}")
    for kind, count in kinds:
        if count:
            print(f"hostile {kind}: asked {count}, opened {tally.opened[kind]}, open failed {tally.open_failed[kind]}, "
                  f"closed by server {tally.closed[kind]} [{timeline(tally.close_times[kind], args.seconds)}]")
            ot = sorted(tally.open_times[kind])
            if len(ot) >= count:
                print(f"  first {count} open between {ot[0]:.2f} s and {ot[count - 1]:.2f} s")
    for f in failures[:10]:
        print(f"probe failure: {f}")
    # Each hostile connection asked for must have been opened at least once, or the server was never
    # under the load the verdict is about (the source addresses refused, the flood ran out of files).
    short = [f"{kind} opened {tally.opened[kind]} of {count}" for kind, count in kinds
             if count and tally.opened[kind] < count]
    for s in short:
        print(f"hostile connections not held: {s}")
    ok = not failures and not short and sent > 0 and len(latencies) == sent and p99 <= args.p99_max_ms
    print("PASS" if ok else f"FAIL (p99 limit {args.p99_max_ms} ms; every probe answered"
          + (f" {args.expect_status}" if args.expect_status else "") + "; every hostile connection opened)")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT of the server under attack")
    ap.add_argument("--tls", action="store_true", help="slow-header connections finish a TLS handshake first")
    ap.add_argument("--slow-header", type=int, default=0)
    ap.add_argument("--silent", type=int, default=0)
    ap.add_argument("--slow-handshake", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--sources", default="127.0.0.1", help="source addresses: a-b ranges and/or a comma list")
    ap.add_argument("--probe", required=True, help="URL the probe GETs")
    ap.add_argument("--probe-ca", default="", help="CA file for an https probe (no verification without it)")
    ap.add_argument("--probe-every", type=float, default=0.2)
    ap.add_argument("--probe-timeout", type=float, default=5.0)
    ap.add_argument("--probe-source", default="", help="source address of the probe")
    ap.add_argument("--p99-max-ms", type=float, default=100)
    ap.add_argument("--expect-status", type=int, default=0,
                    help="a probe counts as answered only with this HTTP status (default: any below 500)")
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    args.host, args.port = host.strip("[]"), int(port)
    args.probe_url = urllib.parse.urlsplit(args.probe)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.slow_header + args.silent + args.slow_handshake + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    # CLOCK_MONOTONIC is one clock for every process: both start at the same instant, 1 s from now.
    args.start = time.monotonic() + 1.0
    args.end = args.start + args.seconds
    parent, child = multiprocessing.get_context("spawn").Pipe()
    probe = multiprocessing.get_context("spawn").Process(target=probe_process, args=(args, child), daemon=True)
    probe.start()
    sys.exit(asyncio.run(main_async(args, probe, parent)))


if __name__ == "__main__":
    main()
