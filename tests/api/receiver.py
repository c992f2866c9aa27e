#!/usr/bin/env python3
"""Standalone Standard Webhooks callback receiver for Switchyard's API tests and for humans.

Run it with the venv's python (tests/api/venv.sh prints the venv path):

    "$(tests/api/venv.sh | tail -n1)/bin/python" tests/api/receiver.py \
        --port 0 --secret whsec_... [--statuses 500,500,200] [--log FILE] [--host 127.0.0.1] [--verbose]

--port N          port to listen on; 0 (the default) picks a free one.
--secret whsec_…  signing secret to verify with (the "whsec_" prefix is optional; the rest is base64,
                  as the Standard Webhooks spec says). Without it every request is logged
                  verified=false, error="no --secret given".
--statuses LIST   HTTP status to answer for the 1st, 2nd, ... request (counted over all paths, in
                  arrival order); the last one repeats. Default: 200.
--log FILE        append one JSON object per request, one per line (file is created at start).
--host ADDR       address to bind; default 127.0.0.1.
--verbose         one line per request on stderr (default: silent, so a parent that never reads
                  our stderr pipe cannot block us).

On start it prints exactly one line, `listening http://127.0.0.1:PORT`, to stdout and flushes;
nothing else is ever written to stdout. SIGTERM or SIGINT stops it with exit status 0.

Every request, whatever its method and path, is read in full (Content-Length or chunked),
verified, logged, and only then answered, so once the sender has the response its log line is
already in the file. A log line has these keys:

    seq                1-based request number (the index into --statuses)
    method, path       as received (path includes any query string)
    webhook_id         the webhook-id header, or null
    webhook_timestamp  the webhook-timestamp header (string, as sent), or null
    verified           true iff standardwebhooks' Webhook(secret).verify(body, headers) accepted it
    error              null when verified, else why not (the library's message, e.g.
                       "No matching signature found", "Message timestamp too old",
                       "Missing required headers")
    status_answered    the HTTP status we answered with
    body               the body parsed as JSON, or null if empty / not JSON

A request that fails verification is NOT answered 401: it gets the configured status like any
other, and only the log says verified=false. Tests assert on the log, and a receiver that
rejected bad signatures would also make the sender retry, mixing two behaviours in one test.

Verification is the library's own: standardwebhooks 1.1.0 (pinned in requirements.txt)
`Webhook(secret).verify(data: bytes|str, headers: dict[str, str]) -> parsed JSON`, which raises
WebhookVerificationError on missing headers / bad signature / a timestamp more than 5 minutes
from now, and may raise ValueError or binascii.Error on a malformed webhook-signature header.
Any exception counts as verified=false.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def parse_statuses(text: str) -> list[int]:
    try:
        statuses = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--statuses wants comma-separated integers, got {text!r}")
    if not statuses or any(not 100 <= s <= 599 for s in statuses):
        raise argparse.ArgumentTypeError(f"--statuses wants HTTP statuses 100..599, got {text!r}")
    return statuses


class Receiver:
    """State shared by the handler threads: status script, request counter, log file."""

    def __init__(self, secret: str | None, statuses: list[int], log_path: str | None, verbose: bool):
        self.webhook = Webhook(secret) if secret else None
        self.statuses = statuses
        self.verbose = verbose
        self.lock = threading.Lock()
        self.count = 0
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None

    def verify(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None if the request verifies, else the reason it does not."""
        if self.webhook is None:
            return "no --secret given"
        try:
            self.webhook.verify(body, headers)
            return None
        except WebhookVerificationError as e:
            return str(e) or type(e).__name__
        except Exception as e:  # malformed signature header, non-UTF-8 body, ...
            return f"{type(e).__name__}: {e}"

    def record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        """Verify, pick the status, append the log line; returns the status to answer."""
        error = self.verify(body, headers)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        lower = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            self.count += 1
            status = self.statuses[min(self.count, len(self.statuses)) - 1]
            entry = {
                "seq": self.count,
                "method": method,
                "path": path,
                "webhook_id": lower.get("webhook-id"),
                "webhook_timestamp": lower.get("webhook-timestamp"),
                "verified": error is None,
                "error": error,
                "status_answered": status,
                "body": parsed,
            }
            if self.log is not None:
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()
            if self.verbose:
                print(f"receiver: {json.dumps(entry)}", file=sys.stderr, flush=True)
        return status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would offer
    server_version = "switchyard-test-receiver"
    receiver: Receiver  # set on the subclass made in main()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.receiver.verbose:
            super().log_message(format, *args)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def handle_any(self) -> None:
        body = self.read_body()
        status = self.receiver.record(self.command, self.path, dict(self.headers.items()), body)
        payload = b"" if status in (204, 304) or status < 200 else json.dumps({"status": status}).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = do_HEAD = do_OPTIONS = handle_any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--secret", default=None)
    ap.add_argument("--statuses", type=parse_statuses, default=[200])
    ap.add_argument("--log", default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    try:
        receiver = Receiver(args.secret, args.statuses, args.log, args.verbose)
    except Exception as e:  # empty or non-base64 secret, unwritable log
        print(f"receiver: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    handler = type("BoundHandler", (Handler,), {"receiver": receiver})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    thread = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    print(f"listening http://{host}:{port}", flush=True)
    while not stop.wait(0.5):  # a timed wait lets the signal handler run promptly
        pass
    server.shutdown()
    server.server_close()
    if receiver.log is not None:
        receiver.log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
