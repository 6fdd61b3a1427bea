#!/usr/bin/env python3
"""A PostgreSQL proxy that goes silent at one command.

    pg_silence_proxy.py UPSTREAM_HOST UPSTREAM_PORT PORT_FILE PREFIX TIMES

Listens on a free port of 127.0.0.1 (written to PORT_FILE once listening)
and forwards every connection to UPSTREAM_HOST:UPSTREAM_PORT. It reads the
frontend protocol: the first TIMES queries (over all connections) whose
text starts with PREFIX, simple (Query) or extended (Parse, as
PQexecParams sends), are swallowed, and from then on that
connection is silent both ways: the server never sees the query, the client
never gets an answer, and both sockets stay open (no FIN, no RST), as on a
path that went half-open or a server that froze at that very command. Later
matching queries pass. Each silenced query is logged to stderr.

The client must not use TLS or GSS encryption through it (sslmode=disable
gssencmode=disable), since the protocol is read in the clear. Runs until
killed.
"""
import os
import socket
import struct
import sys
import threading

up_host, up_port, port_file, prefix, times = sys.argv[1:6]
up_port, times = int(up_port), int(times)
prefix = prefix.encode()
lock = threading.Lock()
left = [times]


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def close(*socks):
    # shutdown first: close() alone does not end a socket another thread is
    # blocked in recv() on, so no FIN would reach the peer.
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass


def serve(client, conn_no):
    try:
        server = socket.create_connection((up_host, up_port))
    except OSError as e:
        print(f"connection {conn_no}: upstream: {e}", file=sys.stderr, flush=True)
        close(client)
        return
    silent = threading.Event()

    def server_to_client():
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                if not silent.is_set():
                    client.sendall(data)
        except OSError:
            pass
        if not silent.is_set():
            close(client, server)

    threading.Thread(target=server_to_client, daemon=True).start()
    try:
        # Untyped packets first: SSLRequest / GSSENCRequest (answered by
        # one byte from the server), then the StartupMessage.
        while True:
            head = read_exact(client, 8)
            if head is None:
                return
            length, code = struct.unpack("!ii", head)
            rest = read_exact(client, length - 8)
            if rest is None:
                return
            server.sendall(head + rest)
            if code not in (80877103, 80877104):
                break
        while True:
            head = read_exact(client, 5)
            if head is None:
                return
            kind, length = head[0:1], struct.unpack("!i", head[1:])[0]
            body = read_exact(client, length - 4)
            if body is None:
                return
            text = b""
            if kind == b"Q":
                text = body
            elif kind == b"P":  # Parse: statement name, then the query
                text = body[body.find(b"\0") + 1:]
            if text.startswith(prefix):
                with lock:
                    hit = left[0] > 0
                    if hit:
                        left[0] -= 1
                if hit:
                    silent.set()
                    print(f"connection {conn_no}: silenced {text[:60].decode(errors='replace')!r}",
                          file=sys.stderr, flush=True)
                    # Keep both sockets open and read what the client
                    # still sends, answering nothing, until it hangs up.
                    while client.recv(65536):
                        pass
                    return
            server.sendall(head + body)
    except OSError:
        pass
    finally:
        close(client, server)


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
with open(port_file + ".tmp", "w", encoding="utf-8") as f:
    f.write(f"{listener.getsockname()[1]}\n")
os.rename(port_file + ".tmp", port_file)
n = 0
while True:
    c, _ = listener.accept()
    n += 1
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
