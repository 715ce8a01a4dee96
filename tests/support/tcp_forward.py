#!/usr/bin/env python3
# A plain TCP forwarder for tests: 127.0.0.1:LISTEN_PORT -> 127.0.0.1:TARGET_PORT, a thread pair per
# connection. SIGSTOP this process and the target goes silent the way a stopped or partitioned server
# does: connections stay open and the kernel still accepts and ACKs, but nothing ever answers (no
# reset, no FIN, so no TCP-level timeout fires). SIGCONT resumes it. Used by
# tests/integration/backupdb/replica_test.cpp (a replica behind it).
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(128)
    while True:
        client, _ = srv.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    main()
