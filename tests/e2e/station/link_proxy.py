#!/usr/bin/env python3
"""A TCP proxy between keyline-station and one `keyline-device serve` (vpcd framing: u16 length ||
payload, docs/readers.md) that records every byte of both directions, for e2e.station.scp11a.

  link_proxy.py PORT_FILE TARGET_HOST:PORT CAPTURE_FILE [--flip-secured-store N | --replay-secured-store N]

Listens on an ephemeral 127.0.0.1 port (written to PORT_FILE once it listens) and serves connections
until killed. --flip-secured-store N changes one byte (the first data byte) of the N-th secured STORE
DATA (CLA bit 04, INS E2) the station sends; --replay-secured-store N sends the (N-1)-th one again in
place of the N-th: an attacker on the link.
"""
import socket
import sys
import threading

port_file, target, capture_path = sys.argv[1], sys.argv[2], sys.argv[3]
flip_at = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--flip-secured-store" else 0
replay_at = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--replay-secured-store" else 0
previous_store = None
host, port = target.rsplit(":", 1)
lock = threading.Lock()
capture = open(capture_path, "ab")
frames = open(capture_path + ".frames", "a")  # one line per station frame / device read, for a failure's log
secured_stores = 0


def record(data, direction):
    with lock:
        capture.write(data)
        capture.flush()
        frames.write(direction + " " + data.hex() + "\n")
        frames.flush()


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def station_to_device(src, dst):
    """Frame by frame, so that one APDU can be changed."""
    global secured_stores, previous_store
    try:
        while True:
            head = recv_exact(src, 2)
            if head is None:
                break
            body = recv_exact(src, int.from_bytes(head, "big"))
            if body is None:
                break
            if len(body) > 5 and body[0] & 0x04 and body[1] == 0xE2:
                with lock:
                    secured_stores += 1
                    n = secured_stores
                if n == flip_at:
                    body = body[:5] + bytes([body[5] ^ 0x01]) + body[6:]
                if n == replay_at and previous_store is not None:
                    head, body = previous_store
                previous_store = (head, body)
            record(head + body, ">")
            dst.sendall(head + body)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def device_to_station(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            record(data, "<")
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client):
    upstream = socket.create_connection((host, int(port)))
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=station_to_device, args=(client, upstream), daemon=True).start()
    threading.Thread(target=device_to_station, args=(upstream, client), daemon=True).start()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(8)
with open(port_file + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
import os  # noqa: E402

os.replace(port_file + ".tmp", port_file)
while True:
    conn, _ = listener.accept()
    serve(conn)
