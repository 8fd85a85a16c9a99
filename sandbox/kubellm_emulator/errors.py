"""Kubernetes API errors as the apiserver reports them: an HTTP status plus a `Status` object."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as a `kind: Status` body with the apiserver's code, reason and message."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _object_details(kind_plural: str, group: str, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": kind_plural}
    if group:
        details["group"] = group
    if name:
        details["name"] = name
    return details


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def _object_error(
    code: int, reason: str, plural: str, group: str, name: str, *, before: str = "", after: str = ""
) -> ApiError:
    """An error about one object: its message names it as the apiserver does, `<plural>[.<group>] "<name>"`."""
    message = f'{before}{_qualified(plural, group)} "{name}"{after}'
    return ApiError(code, reason, message, details=_object_details(plural, group, name))


def not_found(plural: str, group: str, name: str) -> ApiError:
    return _object_error(404, "NotFound", plural, group, name, after=" not found")


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return _object_error(409, "AlreadyExists", plural, group, name, after=" already exists")


def conflict(plural: str, group: str, name: str, why: str) -> ApiError:
    return _object_error(
        409, "Conflict", plural, group, name, before="Operation cannot be fulfilled on ", after=f": {why}"
    )


def stale(plural: str, group: str, name: str) -> ApiError:
    return conflict(
        plural,
        group,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str, accepted: list[str], why: str = "") -> ApiError:
    """415 for a body the server does not read; `why` (what in it is not supported) goes into the message too."""
    cause = f"{content_type}: {why}" if why else f"unknown content type {content_type!r}"
    message = f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}"
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"{message} ({cause})" if why else message,
        details={"causes": [{"message": cause}]},
    )


class GoLiteral:
    """A bad value already rendered as Go's `%#v` prints it (a LabelSelector, an IntOrString), shown verbatim."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class FieldError:
    """One invalid field, worded like apimachinery's field.Error (`spec.x: Invalid value: 1: why`)."""

    def __init__(self, path: str, kind: str, detail: str, value: Any = None, *, show_value: bool = True) -> None:
        self.path = path
        self.kind = kind  # "Invalid value", "Required value", "Unsupported value", "Forbidden", ...
        self.detail = detail
        self.value = value
        self.show_value = show_value

    def cause_reason(self) -> str:
        return {
            "Invalid value": "FieldValueInvalid",
            "Required value": "FieldValueRequired",
            "Unsupported value": "FieldValueNotSupported",
            "Forbidden": "FieldValueForbidden",
            "Duplicate value": "FieldValueDuplicate",
            "Too many": "FieldValueTooMany",
            "Too long": "FieldValueTooLong",
            "Not found": "FieldValueNotFound",
        }.get(self.kind, "FieldValueInvalid")

    def __str__(self) -> str:
        # field.Error.ErrorBody: no value for Required, Forbidden, Too long and Internal error; then ": detail".
        if self.kind in ("Required value", "Forbidden", "Too long", "Internal error") or not self.show_value:
            body = self.kind
        else:
            body = f"{self.kind}: {render_value(self.value)}"
        return f"{self.path}: {body}: {self.detail}" if self.detail else f"{self.path}: {body}"


def render_value(value: Any) -> str:
    """Renders a value the way Go's %#v-ish apimachinery messages show it (strings quoted)."""
    if isinstance(value, GoLiteral):
        return value.text
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return str(value)


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """The 422 `Invalid` Status, e.g. `LLMService.kubellm.dev "x" is invalid: spec.replicas: Invalid value: ...`."""
    qualified_kind = f"{kind}.{group}" if group else kind
    summary = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(error) for error in errors) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified_kind} "{name}" is invalid: {summary}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": error.cause_reason(), "message": str(error).split(": ", 1)[1], "field": error.path}
                for error in errors
            ],
        },
    )
