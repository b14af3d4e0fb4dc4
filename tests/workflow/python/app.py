"""FastAPI app with unmodified upstash-workflow endpoints, run on Herald by test_workflow.py.

QSTASH_URL, QSTASH_TOKEN and both signing keys must be in the environment before this
module is imported (the decorators read them), so every delivery is verified by the SDK.

Endpoints:
  POST /wf/steps       run -> sleep -> call (POST /plain/echo on this app) -> run
  POST /wf/failing     run that raises, with a failure_function (serve retries=0)
  POST /plain/echo     a plain route for context.call
  GET  /state          what the workflows recorded, keyed by the payload's "tag"
"""

import time
from typing import Any, Dict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from upstash_workflow import AsyncWorkflowContext
from upstash_workflow.fastapi import Serve

app = FastAPI()
serve = Serve(app)

# Keyed by the "tag" of the run's payload: route-function invocations, results, failures, echo hits.
HITS: Dict[str, int] = {}
RESULTS: Dict[str, Any] = {}
FAILURES: Dict[str, Any] = {}
ECHO_HITS: Dict[str, int] = {}


def _tag(context: AsyncWorkflowContext) -> str:
    payload = context.request_payload
    return payload.get("tag", "?") if isinstance(payload, dict) else "?"


def _app_base(context: AsyncWorkflowContext) -> str:
    return context.url.rsplit("/wf/", 1)[0]


@app.post("/plain/echo")
async def echo(request: Request) -> JSONResponse:
    body = await request.json()
    tag = body.get("tag", "?")
    ECHO_HITS[tag] = ECHO_HITS.get(tag, 0) + 1
    return JSONResponse(
        {"echo": body, "header": request.headers.get("x-py")},
        status_code=201,
        headers={"x-echo": "py"},
    )


@app.get("/state")
async def state() -> JSONResponse:
    return JSONResponse({"hits": HITS, "results": RESULTS, "failures": FAILURES, "echo_hits": ECHO_HITS})


@serve.post("/wf/steps")
async def steps(context: AsyncWorkflowContext[Dict[str, Any]]) -> None:
    tag = _tag(context)
    HITS[tag] = HITS.get(tag, 0) + 1

    async def _first() -> Dict[str, Any]:
        return {"n": context.request_payload["n"] + 1, "t": time.time()}

    first = await context.run("first", _first)
    await context.sleep("nap", 2)

    async def _woke() -> float:
        return time.time()

    woke = await context.run("woke", _woke)
    called = await context.call(
        "call",
        url=f"{_app_base(context)}/plain/echo",
        method="POST",
        body={"tag": tag, "n": first["n"]},
        headers={"x-py": "yes", "content-type": "application/json"},
    )

    async def _record() -> None:
        RESULTS[tag] = {
            "run_id": context.workflow_run_id,
            "n": first["n"],
            "slept": woke - first["t"],
            "status": called.status,
            "body": called.body,
            "echo_header": (called.header.get("X-Echo") or called.header.get("x-echo") or [None])[0],
        }

    await context.run("record", _record)


async def _on_failure(context: AsyncWorkflowContext, fail_status: int, fail_response: str, fail_headers: Dict[str, Any]) -> None:
    FAILURES[_tag(context)] = {"status": fail_status, "message": fail_response, "run_id": context.workflow_run_id}


@serve.post("/wf/failing", retries=0, failure_function=_on_failure)
async def failing(context: AsyncWorkflowContext[Dict[str, Any]]) -> None:
    tag = _tag(context)
    HITS[tag] = HITS.get(tag, 0) + 1

    async def _boom() -> None:
        raise RuntimeError("py-error")

    await context.run("boom", _boom)
