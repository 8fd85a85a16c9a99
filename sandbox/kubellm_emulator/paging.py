"""Lists as the apiserver serves them from etcd: `limit`/`continue` paging over one consistent snapshot,
`resourceVersion` with `resourceVersionMatch`, and the apiserver's refusals.

- `limit=N` answers at most N items and a `metadata.continue` token (and `remainingItemCount` when no selector
  filters the list); the token is the apiserver's own form, base64url of
  `{"v":"meta.k8s.io/v1","rv":<revision>,"start":"<namespace>/<name>\\u0000"}`
  (k8s.io/apiserver `storage.EncodeContinue`), and every later page is read at that revision: objects created,
  changed or deleted meanwhile do not show, as etcd serves a paged list.
- A token whose revision the event log no longer reaches is 410 Expired with the apiserver's message (etcd
  compaction); a malformed one is 400 `continue key is not valid`.
- `resourceVersion=N` with `resourceVersionMatch=Exact` (or with a limit and no match) is the list at revision N;
  `NotOlderThan` (or no match) is the current list, 504 `Too large resource version` when N is in the future;
  `resourceVersion=0` is served from the "watch cache": the whole current list, the limit ignored.
- ListOptions validation (`ValidateListOptions`): `resourceVersionMatch` needs a `resourceVersion`, is forbidden with
  `continue` and `Exact` is forbidden with `0`: 422 `ListOptions.meta.k8s.io "" is invalid: ...`; `continue` with a
  `resourceVersion` is 400.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

from kubellm_emulator import errors
from kubellm_emulator.errors import ApiError, FieldError
from kubellm_emulator.resources import ResourceType

JsonObject = dict[str, Any]
CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list."
)


@dataclasses.dataclass(frozen=True)
class Page:
    items: list[JsonObject]
    metadata: JsonObject


def encode_continue(resource_version: int, key: tuple[str, str]) -> str:
    start = f"{key[0]}/{key[1]}" if key[0] else key[1]
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": resource_version, "start": start + "\x00"}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if raw.get("v") != "meta.k8s.io/v1":
            raise ValueError("server does not recognize this encoded key")
        start = str(raw["start"]).rstrip("\x00")
        resource_version = int(raw["rv"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as error:
        raise errors.bad_request(f"continue key is not valid: {error}") from None
    namespace, _, name = start.rpartition("/")
    return resource_version, (namespace, name)


def _invalid(problems: list[FieldError]) -> ApiError:
    return errors.invalid("ListOptions", "meta.k8s.io", "", problems)


def list_page(
    store: Any,
    rtype: ResourceType,
    namespace: str | None,
    params: Mapping[str, str],
    matches: Callable[[JsonObject], bool],
) -> Page:
    token = params.get("continue") or ""
    resource_version = params.get("resourceVersion") or ""
    match = params.get("resourceVersionMatch") or ""
    try:
        limit = int(params.get("limit") or 0)
    except ValueError:
        raise errors.bad_request(f"invalid limit {params.get('limit')!r}: an integer is expected") from None
    if match:
        if match not in ("Exact", "NotOlderThan"):
            raise _invalid(
                [
                    FieldError(
                        "resourceVersionMatch", "Unsupported value", 'supported values: "Exact", "NotOlderThan"', match
                    )
                ]
            )
        if not resource_version:
            raise _invalid(
                [
                    FieldError(
                        "resourceVersionMatch",
                        "Forbidden",
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    )
                ]
            )
        if token:
            raise _invalid(
                [
                    FieldError(
                        "resourceVersionMatch",
                        "Forbidden",
                        "resourceVersionMatch is forbidden when continue is provided",
                    )
                ]
            )
        if match == "Exact" and resource_version == "0":
            raise _invalid(
                [
                    FieldError(
                        "resourceVersionMatch",
                        "Forbidden",
                        'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                    )
                ]
            )
    if token and resource_version:
        raise errors.bad_request("specifying resource version is not allowed when using continue")
    if resource_version and not resource_version.isdigit():
        raise errors.bad_request(f"invalid resource version {resource_version!r}")
    start: tuple[str, str] | None = None
    if token:
        at, start = decode_continue(token)
        try:
            pairs = store.snapshot(rtype, namespace, at)
        except ApiError as error:
            if error.code == 410:
                raise ApiError(410, "Expired", CONTINUE_TOO_OLD) from None
            raise
    elif resource_version and resource_version != "0" and (match == "Exact" or (limit and not match)):
        at = int(resource_version)
        pairs = store.snapshot(rtype, namespace, at)
    else:
        with store.lock:
            at = store.resource_version
            if resource_version and int(resource_version) > at:
                store.snapshot(rtype, namespace, int(resource_version))  # raises the 504 "Too large"
            pairs = store.snapshot(rtype, namespace, at)
        if resource_version == "0":
            limit = 0  # served from the watch cache: the whole list
    selected = [(key, item) for key, item in pairs if matches(item) and (start is None or key > start)]
    metadata: JsonObject = {"resourceVersion": str(at)}
    if limit and len(selected) > limit:
        last_key = selected[limit - 1][0]
        metadata["continue"] = encode_continue(at, last_key)
        if not params.get("labelSelector") and not params.get("fieldSelector"):
            metadata["remainingItemCount"] = len(selected) - limit
        selected = selected[:limit]
    return Page([item for _, item in selected], metadata)
