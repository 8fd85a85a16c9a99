"""The server's shared state and the typed accessors that routes use to reach it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request

from kubellm.contract import ServerSettings
from kubellm_inference.engine import GenerationEngine
from kubellm_inference.metrics import ServerMetrics
from kubellm_inference.progress import LoadProgress


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    engine: GenerationEngine
    started_at: int = field(default_factory=lambda: int(time.time()))
    progress: LoadProgress = field(default_factory=LoadProgress)


def app_state(app: FastAPI) -> ServerState:
    state = app.state.kubellm
    assert isinstance(state, ServerState)
    return state


def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app serving ``request``."""
    return app_state(request.app)
