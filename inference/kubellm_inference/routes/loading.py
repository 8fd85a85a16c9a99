"""``GET /loadz``: where the model load is (phase, bytes done and total, rate, restarts) and the compiled decode
step's build, as JSON."""

from __future__ import annotations

from fastapi import APIRouter

from kubellm.contract import LOADZ_PATH
from kubellm_inference.generation import State
from kubellm_inference.progress import Phase

router = APIRouter()


@router.get(LOADZ_PATH)
async def loadz(state: State) -> dict[str, object]:
    snapshot = state.progress.snapshot()
    # The engine owns the last two phases: ready once warmed up, failed when the load failed.
    if state.engine.ready:
        snapshot["phase"] = Phase.ready.value
    elif state.engine.failure is not None:
        snapshot["phase"] = Phase.failed.value
        snapshot["detail"] = state.engine.failure
    snapshot["line"] = (
        state.progress.line() if snapshot["phase"] not in (Phase.ready, Phase.failed) else snapshot["phase"]
    )
    snapshot["model"] = state.settings.model_id
    # Which decode step serves, and the compiled one's build: state, buckets built, seconds.
    snapshot["compile"] = state.engine.compile_status.snapshot(state.engine.step)
    return snapshot
