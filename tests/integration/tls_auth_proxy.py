#!/usr/bin/env python3
"""An HTTPS front for the test registry that demands credentials, so the
relay's TLS (CA file) and Basic / bearer auth are exercised end to end:

  tls_auth_proxy.py CERT KEY UPSTREAM USER PASSWORD TOKEN PORT_FILE LOG

Accepts "Authorization: Basic base64(USER:PASSWORD)" or "Bearer TOKEN",
answers 401 otherwise, forwards everything else to UPSTREAM (http://...).
Writes the port it listens on (127.0.0.1, chosen by the kernel) to
PORT_FILE and one line per request to LOG.
"""
import base64
import http.server
import ssl
import sys
import urllib.error
import urllib.request

cert, key, upstream, user, password, token, port_file, log_path = sys.argv[1:9]
basic = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
bearer = "Bearer " + token
log = open(log_path, "a", buffering=1)


class Handler(http.server.BaseHTTPRequestHandler):
    def _handle(self):
        auth = self.headers.get("Authorization", "")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = "basic" if auth == basic else "bearer" if auth == bearer else "refused"
        log.write("%s %s %s\n" % (self.command, self.path, kind))
        if kind == "refused":
            out, status = b'{"error_code":401,"message":"Unauthorized"}', 401
        else:
            req = urllib.request.Request(upstream + self.path, data=body if self.command == "POST" else None,
                                         method=self.command)
            for h in ("Content-Type", "Accept"):
                if self.headers.get(h):
                    req.add_header(h, self.headers[h])
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    out, status = r.read(), r.status
            except urllib.error.HTTPError as e:
                out, status = e.read(), e.code
            except Exception as e:  # upstream down: like a gateway would
                out, status = ('{"message":"upstream: %s"}' % e).encode(), 502
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _handle

    def log_message(self, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os  # noqa: E402
os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
