#!/usr/bin/env python3
"""Memory per SSE subscriber of a running node, plain HTTP/1.1 against HTTPS (HTTP/1.1 by
ALPN, the lean SSE loop behind the TLS handshake).

Opens N event streams to one node, waits until each has its snapshot, and reads the node's
RSS (VmRSS of /proc/PID/status) before and after; prints KiB per subscriber.

    python3 bench/https_sse_rss.py --pid PID --url http://127.0.0.1:8101 -n 2000
    python3 bench/https_sse_rss.py --pid PID --url https://127.0.0.1:8443 --cafile ca.pem -n 2000

The client's own limits: ulimit -n above N; loopback only.
"""
import argparse
import socket
import ssl
import sys
import time
import urllib.parse


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def open_stream(url, context):
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=parts.hostname)
    request = (
        f"GET /v1/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    sock.sendall(request)
    received = b""
    deadline = time.monotonic() + 10
    while b"event: snapshot" not in received:
        if time.monotonic() > deadline:
            raise SystemExit("no snapshot within 10 s")
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("stream closed before its snapshot")
        received += chunk
    return sock


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--cafile")
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args()
    context = None
    if args.url.startswith("https://"):
        context = ssl.create_default_context(cafile=args.cafile)
        context.set_alpn_protocols(["http/1.1"])
    # Warm the node up (allocator arenas, the snapshot cache) before the baseline.
    warm = [open_stream(args.url, context) for _ in range(50)]
    for sock in warm:
        sock.close()
    time.sleep(1)
    before = rss_kib(args.pid)
    streams = [open_stream(args.url, context) for _ in range(args.n)]
    time.sleep(1)
    after = rss_kib(args.pid)
    per = (after - before) / args.n
    print(f"{args.url}: {args.n} subscribers, RSS {before} -> {after} KiB, {per:.2f} KiB each")
    for sock in streams:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
