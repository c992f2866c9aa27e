"""Self-test of tests/api/receiver.py and of the pinned standardwebhooks API it relies on.

    "$(tests/api/venv.sh | tail -n1)/bin/python" -m unittest tests/api/test_receiver.py -v

Re-run after bumping standardwebhooks in requirements.txt.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from datetime import datetime, timezone
from unittest import mock

import standardwebhooks.webhooks as swh

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "whsec_" + base64.b64encode(b"switchyard-receiver-self-test-32b").decode()

# Published Standard Webhooks test vector (standard-webhooks spec / libraries' own tests).
VEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VEC_TS = "1614265330"
VEC_PAYLOAD = '{"test": 2432232314}'
VEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


class FrozenDatetime(datetime):
    """datetime whose now() is the vector's timestamp, for the library's 5-minute tolerance check."""

    @classmethod
    def now(cls, tz=None):
        return datetime.fromtimestamp(int(VEC_TS), tz=tz or timezone.utc)


class LibraryApi(unittest.TestCase):
    def test_vector_sign(self):
        ts = datetime.fromtimestamp(int(VEC_TS), tz=timezone.utc)
        self.assertEqual(swh.Webhook(VEC_SECRET).sign(VEC_ID, ts, VEC_PAYLOAD), VEC_SIG)

    def test_vector_verify_at_its_own_time(self):
        headers = {"webhook-id": VEC_ID, "webhook-timestamp": VEC_TS, "webhook-signature": VEC_SIG}
        with mock.patch.object(swh, "datetime", FrozenDatetime):
            self.assertEqual(swh.Webhook(VEC_SECRET).verify(VEC_PAYLOAD.encode(), headers), {"test": 2432232314})

    def test_vector_is_too_old_today(self):
        headers = {"webhook-id": VEC_ID, "webhook-timestamp": VEC_TS, "webhook-signature": VEC_SIG}
        with self.assertRaisesRegex(swh.WebhookVerificationError, "too old"):
            swh.Webhook(VEC_SECRET).verify(VEC_PAYLOAD, headers)


class ReceiverProcess(unittest.TestCase):
    def start(self, *args: str) -> None:
        fd, self.log = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "receiver.py"), "--port", "0", "--log", self.log, *args],
            stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline().strip()
        self.assertRegex(line, r"^listening http://127\.0\.0\.1:\d+$")
        self.url = line.split(" ", 1)[1]

    def tearDown(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        os.unlink(self.log)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(self.url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    def entries(self) -> list[dict]:
        with open(self.log, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def signed(self, secret: str, msg_id: str, body: str) -> dict[str, str]:
        now = datetime.now(tz=timezone.utc)
        return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": swh.Webhook(secret).sign(msg_id, now, body)}

    def test_statuses_verification_and_log(self):
        self.start("--secret", SECRET, "--statuses", "500,503,200")
        body = '{"run_id": "r1", "status": "succeeded"}'
        good = self.signed(SECRET, "msg_1", body)
        self.assertEqual(self.post("/cb", body.encode(), good), 500)
        self.assertEqual(self.post("/cb", body.encode(), good), 503)
        wrong = self.signed("whsec_" + base64.b64encode(b"another secret").decode(), "msg_2", body)
        self.assertEqual(self.post("/cb?x=1", body.encode(), wrong), 200)  # unverified still gets its status
        self.assertEqual(self.post("/cb", b"not json", {}), 200)  # last status repeats
        tampered = dict(good, **{"webhook-signature": "garbage-without-comma"})
        self.assertEqual(self.post("/cb", body.encode(), tampered), 200)

        e = self.entries()
        self.assertEqual([x["status_answered"] for x in e], [500, 503, 200, 200, 200])
        self.assertEqual([x["verified"] for x in e], [True, True, False, False, False])
        self.assertEqual(e[0]["body"], {"run_id": "r1", "status": "succeeded"})
        self.assertEqual((e[0]["webhook_id"], e[0]["webhook_timestamp"], e[0]["error"]),
                         ("msg_1", good["webhook-timestamp"], None))
        self.assertEqual((e[2]["path"], e[2]["error"]), ("/cb?x=1", "No matching signature found"))
        self.assertEqual((e[3]["body"], e[3]["webhook_id"], e[3]["error"]), (None, None, "Missing required headers"))
        self.assertTrue(e[4]["error"].startswith("ValueError"), e[4]["error"])
        self.assertEqual(set(e[0]), {"seq", "method", "path", "webhook_id", "webhook_timestamp", "verified",
                                     "error", "status_answered", "body"})

    def test_sigterm_exits_cleanly(self):
        self.start()
        self.assertEqual(self.post("/", b"{}", {}), 200)
        self.assertEqual(self.entries()[0]["error"], "no --secret given")
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=5), 0)
        self.assertEqual(self.proc.stdout.read(), "")  # exactly one stdout line

    def test_sigint_exits_cleanly(self):
        self.start("--secret", SECRET)
        time.sleep(0.1)
        self.proc.send_signal(signal.SIGINT)
        self.assertEqual(self.proc.wait(timeout=5), 0)

    def test_bad_secret_is_a_startup_error(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "receiver.py"), "--secret", "whsec_"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fd, self.log = tempfile.mkstemp()
        os.close(fd)
        self.assertEqual(self.proc.wait(timeout=5), 2)
        self.assertIn("may not be empty", self.proc.stderr.read())


if __name__ == "__main__":
    unittest.main()
