"""Verifies Herald's Upstash-Signature with the official, pinned PyPI `qstash` Receiver,
before and after a signing-key rotation.

    HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> python verify.py

Herald must allow deliveries to 127.0.0.1 (herald dev does). This test rotates the
tenant's signing keys.
"""

import json
import os
import secrets
import threading
import time
import unittest
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qstash import Receiver

BASE_URL = os.environ.get("HERALD_URL", "").rstrip("/")
TOKEN = os.environ.get("HERALD_TOKEN", "")
BODY = json.dumps({"order": 42, "note": "grüße ✓ — signed"}, ensure_ascii=False)

received = []
received_lock = threading.Lock()


class Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with received_lock:
            received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def herald(method, path, body=None):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(
        BASE_URL + path, data=data, method=method, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def verifies(receiver, delivery, **overrides):
    args = {"signature": delivery["signature"], "body": delivery["body"], "url": delivery["url"]}
    args.update(overrides)
    try:
        receiver.verify(**args)
        return True
    except Exception:
        return False


class SignatureTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not BASE_URL or not TOKEN:
            raise RuntimeError("set HERALD_URL and HERALD_TOKEN (a running Herald and a tenant token)")
        cls.server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        cls.base = f"http://127.0.0.1:{cls.server.server_address[1]}"
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def deliver(self, body):
        event = f"sig-py-{secrets.token_hex(6)}"
        url = f"{self.base}/hook/{event}"
        herald("POST", f"/v2/wait/{event}", json.dumps({"url": url}))
        notified = herald("POST", f"/v2/notify/{event}", body)
        self.assertEqual(len(notified), 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with received_lock:
                got = [r for r in received if r[0] == f"/hook/{event}"]
            if got:
                _, headers, raw = got[0]
                self.assertIn("upstash-signature", headers, "the delivery is signed")
                return {"signature": headers["upstash-signature"], "body": raw.decode("utf-8"), "url": url}
            time.sleep(0.02)
        self.fail(f"no delivery for {event} within 10 s")

    def test_signatures_verify_before_and_after_a_rotation(self):
        before = herald("GET", "/v2/keys")
        old_receiver = Receiver(current_signing_key=before["current"], next_signing_key=before["next"])

        first = self.deliver(BODY)
        self.assertEqual(first["body"], BODY, "the exact bytes arrive")
        self.assertTrue(verifies(old_receiver, first), "verifies with the current key")
        self.assertFalse(verifies(old_receiver, first, body=BODY + " "), "a changed body fails")
        self.assertFalse(verifies(old_receiver, first, url=first["url"] + "-elsewhere"), "another url fails")
        strangers = Receiver(
            current_signing_key="sig_" + secrets.token_hex(12), next_signing_key="sig_" + secrets.token_hex(12)
        )
        self.assertFalse(verifies(strangers, first), "other keys fail")

        rotated = herald("POST", "/v2/keys/rotate")
        self.assertEqual(rotated["current"], before["next"], "rotation promotes the next key")
        new_receiver = Receiver(current_signing_key=rotated["current"], next_signing_key=rotated["next"])
        only_old = Receiver(current_signing_key=before["current"], next_signing_key=before["current"])
        # Workers cache a tenant's key for up to 5 s: wait until deliveries use the new one.
        deadline = time.monotonic() + 20
        while True:
            second = self.deliver(BODY)
            if not verifies(only_old, second):
                break
            self.assertLess(time.monotonic(), deadline, "still signed with the old key after 20 s")
            time.sleep(0.25)
        self.assertTrue(verifies(new_receiver, second), "verifies with the rotated keys")
        self.assertTrue(
            verifies(old_receiver, second), "a receiver still configured with the old keys verifies through its next key"
        )
        self.assertFalse(verifies(new_receiver, second, body="tampered"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
