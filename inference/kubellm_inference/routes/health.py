"""Health probes. /healthz: the process answers (the seed's probe). /readyz: the model is loaded, a warm-up
generation succeeded and the server is not draining. /livez: the generation worker runs and no step is stuck;
it never runs a generation itself."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kubellm.contract import HEALTHZ_PATH, LIVEZ_PATH, READYZ_PATH
from kubellm_inference.errors import APIError
from kubellm_inference.generation import State
from kubellm_inference.routes.loading import shows_details

router = APIRouter()


@router.get(HEALTHZ_PATH)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(READYZ_PATH)
async def readyz(state: State, request: Request) -> JSONResponse:
    engine = state.engine
    details = shows_details(state, request)
    if engine.ready:
        return JSONResponse({"status": "ready", "model": state.settings.model_id} if details else {"status": "ready"})
    if engine.draining:
        reason = "draining: the server is shutting down"
    elif engine.failure is not None:
        # The kubelet records only the status code; the reason is also the container's termination message.
        reason = f"model load failed: {engine.failure}" if details else "model load failed"
    else:
        # The startup probe's answer says where the load is: "model not ready: downloading 6.2/14.5Gi (43%), ...".
        reason = f"model not ready: {state.progress.line() if details else state.progress.snapshot()['phase']}"
    return APIError(503, reason, code="not_ready").response()


@router.get(LIVEZ_PATH)
async def livez(state: State) -> JSONResponse:
    alive, why = state.engine.liveness()
    if alive:
        return JSONResponse({"status": "alive", "worker": why})
    return APIError(503, why, code="not_alive").response()
