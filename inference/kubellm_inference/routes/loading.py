"""``GET /loadz``: where the model load is (phase, bytes done and total, rate, restarts), and the compiled decode step's build, as JSON.

Open without the API key, because the operator reads it and holds no tenant's key; with
``metrics_require_api_key`` a caller without the key gets only the progress (no model id, no detail, which
names the repository and the failure).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from kubellm.contract import LOADZ_PATH
from kubellm_inference.generation import State
from kubellm_inference.guard import request_has_api_key
from kubellm_inference.progress import Phase
from kubellm_inference.state import ServerState

router = APIRouter()


@router.get(LOADZ_PATH)
async def loadz(state: State, request: Request) -> dict[str, object]:
    snapshot = state.progress.snapshot()
    details = shows_details(state, request)
    phase = _engine_phase(state)
    if phase is not None:
        snapshot["phase"] = phase
    if phase == Phase.failed:
        snapshot["detail"] = state.engine.failure
    # The download's line holds only figures; other phases' lines quote the detail.
    in_progress = snapshot["phase"] not in (Phase.ready, Phase.failed)
    shown_line = in_progress and (details or snapshot["phase"] == Phase.downloading)
    snapshot["line"] = state.progress.line() if shown_line else snapshot["phase"]
    if details:
        snapshot["model"] = state.settings.model_id
        # Which decode step serves, and the compiled one's build: state, buckets built, seconds, cache folder.
        snapshot["compile"] = state.engine.compile_status.snapshot(state.engine.step)
    else:
        snapshot["detail"] = None
    return snapshot


def _engine_phase(state: ServerState) -> str | None:
    """The engine owns the last two phases: ready once warmed up, failed when the load failed."""
    if state.engine.ready:
        return Phase.ready.value
    if state.engine.failure is not None:
        return Phase.failed.value
    return None


def shows_details(state: ServerState, request: Request) -> bool:
    """Whether an open status route may show the model id and failure text to this caller."""
    return not state.settings.metrics_require_api_key or request_has_api_key(request.scope, state.settings)
