#!/usr/bin/env python3
"""Stand-in for systemd's notification socket.

    notify_listen.py SOCKET_PATH OUT_FILE

Binds a Unix datagram socket at SOCKET_PATH and appends every message
received to OUT_FILE as one line: milliseconds since the epoch, a tab, and
the message with its newlines shown as '|'. Runs until killed.
"""
import os
import socket
import sys
import time

path, out = sys.argv[1], sys.argv[2]
if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(out, "a", encoding="utf-8") as f:
    print(f"{int(time.time() * 1000)}\tLISTENING", file=f, flush=True)
    while True:
        data = s.recv(65536)
        msg = data.decode("utf-8", "replace").strip().replace("\n", "|")
        print(f"{int(time.time() * 1000)}\t{msg}", file=f, flush=True)
