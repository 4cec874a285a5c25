"""`POST /webhook/github`: signed GitHub deliveries; a push that changes a registered notebook
queues a pipeline (never runs work inline, so GitHub's 10-second limit is never near)."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Request, Response, status

from gateway import pipeline_runs
from gateway.deps import ResourcesDep
from gateway.github_events import verify_signature
from gateway.schemas import Pong, WebhookAccepted, error_responses
from mlops_core.errors import InvalidInput

router = APIRouter(tags=["webhook"])


@router.post(
    "/webhook/github",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookAccepted | Pong,
    # NOTE: `note` appears only when there is one, so a normal answer keeps its three keys.
    response_model_exclude_none=True,
    responses={
        200: {"model": Pong, "description": "`ping` event"},
        202: {"model": WebhookAccepted, "description": "`push` (and ignored other events)"},
        **error_responses(
            (401, "X-Hub-Signature-256 does not match the body"),
            (
                413,
                "request body exceeds 5242880 bytes (MLOPS_MAX_WEBHOOK_BYTES)",
            ),
            (422, "missing X-GitHub-Event header"),
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object"},
                    "example": {
                        "ref": "refs/heads/main",
                        "after": "9fceb02d0ae598e95dc970b74767f19372d61af8",
                        "repository": {
                            "full_name": "acme/iris-training",
                            "clone_url": "https://github.com/acme/iris-training.git",
                        },
                        "commits": [{"added": [], "modified": ["notebooks/train.ipynb"]}],
                    },
                }
            },
        }
    },
)
async def github_webhook(
    request: Request,
    response: Response,
    resources: ResourcesDep,
    x_github_event: Annotated[str | None, Header()] = None,
    x_github_delivery: Annotated[str | None, Header(max_length=128)] = None,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
) -> WebhookAccepted | Pong:
    """Receive a GitHub delivery signed with `GITHUB_WEBHOOK_SECRET` (HMAC-SHA256 of the raw
    body). `ping`: 200; `push`: 202 with the pipelines it queued (a push whose repository,
    commit and notebook an earlier delivery started queues nothing and names that pipeline
    in `duplicate_of`); other events: 202, ignored."""
    settings = resources.settings
    # NOTE: bounded by MLOPS_MAX_WEBHOOK_BYTES (gateway.body_limit, set up in app.py): the
    # signature covers these exact bytes, so they are read whole, but never more.
    body = await request.body()
    if settings.github_webhook_secret or not settings.dev_mode:
        verify_signature(settings.github_webhook_secret, body, x_hub_signature_256)
    if not x_github_event:
        raise InvalidInput("missing X-GitHub-Event header")
    if x_github_event == "ping":
        response.status_code = status.HTTP_200_OK
        zen = _payload(body, request.headers.get("content-type", "")).get("zen")
        return Pong(status="pong", zen=zen if isinstance(zen, str) else None)
    if x_github_event != "push":
        return WebhookAccepted(pipeline_ids=[])
    payload = _payload(body, request.headers.get("content-type", ""))
    outcome, note = await pipeline_runs.handle_push(resources, x_github_delivery, payload)
    return WebhookAccepted(
        pipeline_ids=outcome.pipeline_ids,
        duplicate_of=outcome.duplicate_of,
        replayed=outcome.replayed,
        note=note,
    )


def _payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The event's JSON, sent as the body (`application/json`) or as the `payload` form field
    (`application/x-www-form-urlencoded`, GitHub's other content type)."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        fields = parse_qs(body.decode(errors="replace"))
        body = (fields.get("payload") or [""])[0].encode()
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"webhook body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("webhook body must be a JSON object")
    return payload
