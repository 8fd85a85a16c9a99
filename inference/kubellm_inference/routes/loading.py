"""``GET /loadz``: where the model load is (phase, bytes done and total, rate, restarts), as JSON."""

from __future__ import annotations

from fastapi import APIRouter

from kubellm.contract import LOADZ_PATH
from kubellm_inference.generation import State
from kubellm_inference.progress import Phase

router = APIRouter()


@router.get(LOADZ_PATH)
async def loadz(state: State) -> dict[str, object]:
    # The engine writes the last two phases into the progress: ready once warmed up, failed when the load failed
    # (the metrics read the same progress).
    snapshot = state.progress.snapshot()
    snapshot["line"] = (
        state.progress.line() if snapshot["phase"] not in (Phase.ready, Phase.failed) else snapshot["phase"]
    )
    snapshot["model"] = state.settings.model_id
    return snapshot
