"""Runs the FastAPI workflows of app.py (PyPI upstash-workflow) on a running Herald.

    HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> python test_workflow.py

Starts uvicorn with app.py as a child process on 127.0.0.1:<random port>, with QSTASH_URL,
QSTASH_TOKEN and the tenant's signing keys (from GET /v2/keys) in its environment, starts
runs with a plain publish (POST /v2/publish/<endpoint url>) and polls the app's GET /state.
Plain asserts; prints one line per test and "N passed, N failed" at the end.
"""

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
HERALD_URL = os.environ.get("HERALD_URL", "").strip().rstrip("/")
HERALD_TOKEN = os.environ.get("HERALD_TOKEN", "").strip()


def request(method, url, body=None, headers=None, auth=True, timeout=10):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if auth:
        req.add_header("Authorization", f"Bearer {HERALD_TOKEN}")
    if body is not None and not isinstance(body, bytes):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(probe, what, timeout=45.0, describe=None):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(0.1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    def __init__(self, keys):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("QSTASH_DEV", "QSTASH_REGION", "UPSTASH_WORKFLOW_URL")}
        env.update(
            QSTASH_URL=HERALD_URL,
            QSTASH_TOKEN=HERALD_TOKEN,
            QSTASH_CURRENT_SIGNING_KEY=keys["current"],
            QSTASH_NEXT_SIGNING_KEY=keys["next"],
        )
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"],
            cwd=HERE,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"uvicorn exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return request("GET", f"{self.base}/state", auth=False, timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(up, "uvicorn to answer", timeout=30)

    def state(self):
        status, text = request("GET", f"{self.base}/state", auth=False)
        assert status == 200, (status, text)
        return json.loads(text)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-6000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def publish(app, path, body):
    status, text = request("POST", f"{HERALD_URL}/v2/publish/{app.base}{path}", body)
    assert 200 <= status < 300, f"publish to {path}: {status} {text}"
    return json.loads(text)


def test_steps(app):
    """run -> sleep 2 s -> call a route of the same app -> run: completes with everything seen."""
    tag = secrets.token_hex(6)
    publish(app, "/wf/steps", {"tag": tag, "n": 1})
    result = wait_for(
        lambda: app.state()["results"].get(tag),
        f"run {tag} of /wf/steps to complete",
        describe=lambda: f"state: {json.dumps(app.state())}\napp log:\n{app.output()}",
    )
    assert result["run_id"].startswith("wfr_"), result
    assert result["n"] == 2, result
    assert result["slept"] >= 2.0, f"slept only {result['slept']:.3f} s"
    assert result["status"] == 201, result
    assert result["body"] == {"echo": {"tag": tag, "n": 2}, "header": "yes"}, result
    assert result["echo_header"] == "py", result
    assert app.state()["echo_hits"].get(tag) == 1, app.state()


def test_failure_function(app):
    """A step raises with serve(retries=0): failure_function gets status 500 and the message."""
    tag = secrets.token_hex(6)
    publish(app, "/wf/failing", {"tag": tag})
    failure = wait_for(
        lambda: app.state()["failures"].get(tag),
        f"failure_function for {tag}",
        describe=lambda: f"state: {json.dumps(app.state())}\napp log:\n{app.output()}",
    )
    assert failure["status"] == 500, failure
    assert failure["message"] == "py-error", failure
    assert failure["run_id"].startswith("wfr_"), failure


def main():
    if not HERALD_URL or not HERALD_TOKEN:
        sys.exit("set HERALD_URL and HERALD_TOKEN (a running Herald and a tenant token)")
    status, text = request("GET", f"{HERALD_URL}/v2/keys")
    assert status == 200, f"GET /v2/keys: {status} {text}"
    keys = json.loads(text)

    app = App(keys)
    passed = failed = 0
    try:
        for test in (test_steps, test_failure_function):
            started = time.monotonic()
            try:
                test(app)
                passed += 1
                print(f"ok {test.__name__} ({time.monotonic() - started:.1f} s)", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {test.__name__}\n{traceback.format_exc()}", flush=True)
    finally:
        app.stop()
    print(f"python: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
