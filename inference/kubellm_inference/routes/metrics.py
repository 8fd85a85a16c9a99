"""Prometheus exposition of the server's own registry."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubellm.contract import METRICS_PATH
from kubellm_inference.generation import State

router = APIRouter()


@router.get(METRICS_PATH)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
