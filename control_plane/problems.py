"""RFC 9457 problem details: every error the API returns has this shape.

``type`` is a stable URN per kind of problem (``urn:zapfleet:problem:<code>``) so clients
can branch on it; ``title`` is constant per type; ``detail`` explains this occurrence.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from contract.protocol import ErrorCode

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# route opt: answers always under 1 KiB, the compression middleware is skipped
SMALL_ANSWERS = "small_answers"

AGENT_ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.SESSION_EXISTS: 409,
    ErrorCode.STALE_EPOCH: 409,
    ErrorCode.CAPACITY_FULL: 503,
    ErrorCode.MEMORY_PRESSURE: 503,
    ErrorCode.DRAINING: 503,
    ErrorCode.NOT_CONNECTED: 409,
    ErrorCode.NOT_PAIRING: 409,
    ErrorCode.INVALID_NUMBER: 422,
    ErrorCode.INVALID_CHAT_ID: 422,
    ErrorCode.MESSAGE_NOT_FOUND: 422,
    ErrorCode.MESSAGE_NOT_EDITABLE: 422,
    ErrorCode.EDIT_WINDOW_CLOSED: 422,
    ErrorCode.REVOKE_WINDOW_CLOSED: 422,
    ErrorCode.UNSUPPORTED_MESSAGE: 422,
    ErrorCode.MEDIA_TOO_LARGE: 413,
    ErrorCode.MEDIA_UNAVAILABLE: 422,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.DAILY_CAP_REACHED: 429,
    ErrorCode.ENGINE_ERROR: 502,
    ErrorCode.INTERNAL: 500,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.LEASE_EXPIRED: 503,
    ErrorCode.UNDECODABLE_MEDIA: 422,
    ErrorCode.MEDIA_NOT_FOUND: 404,
    # -- contacts, profile, calls (issue 16) --
    ErrorCode.NOT_ON_WHATSAPP: 404,
    ErrorCode.INVALID_IMAGE: 422,
    ErrorCode.INVALID_PRIVACY_VALUE: 422,
    # -- groups (issue 16) --
    ErrorCode.GROUP_NOT_FOUND: 404,
    ErrorCode.NOT_GROUP_ADMIN: 403,
    ErrorCode.INVALID_INVITE_LINK: 422,
    ErrorCode.NOT_SUPPORTED: 501,
}


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(HTTPException):
    """Raise anywhere in a handler to answer with problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail=detail, status_code=status, headers=headers)
        self.code = code
        self.errors = errors


def problem_type(code: str) -> str:
    return f"urn:zapfleet:problem:{code}"


def _malformed_json(exc: BaseException) -> msgspec.DecodeError | None:
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, msgspec.DecodeError) and not isinstance(
            cause, msgspec.ValidationError
        ):
            return cause
        cause = cause.__cause__
    return None


def _code_for(exc: HTTPException) -> str:
    if _malformed_json(exc) is not None:
        return "malformed_json"
    if isinstance(exc, ProblemError):
        return exc.code
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        sources = {e.get("source") for e in extra if isinstance(e, dict)}
        if sources and sources <= {"query", "path", "header", "cookie"}:
            return "invalid_parameter"
        return "invalid_body"
    if isinstance(exc, NotFoundException):
        return "not_found"
    return HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")


def _errors_for(exc: HTTPException) -> list[dict[str, Any]] | None:
    if isinstance(exc, ProblemError):
        return exc.errors
    extra = exc.extra
    if isinstance(extra, list):
        return [e if isinstance(e, dict) else {"message": str(e)} for e in extra]
    if isinstance(extra, dict):
        return [extra]
    return None


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    if isinstance(exc, RecursionError) and "deserializ" in str(exc):
        # msgspec's JSON decoder refuses nesting deeper than the interpreter's stack
        exc = ProblemError(400, "malformed_json", "the request body is nested too deeply")
    elif isinstance(exc, UnicodeDecodeError):
        # msgspec lets this through for invalid UTF-8 inside a string (e.g. a surrogate)
        exc = ProblemError(400, "malformed_json", f"the request body is not valid UTF-8: {exc}")
    if not isinstance(exc, HTTPException):
        log.error(
            "unhandled error",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"path": request.url.path},
        )
        exc = HTTPException(status_code=500, detail="internal error")
    status = exc.status_code
    code = _code_for(exc)
    detail = exc.detail
    errors = _errors_for(exc)
    if isinstance(exc, ValidationException) and errors:
        detail = "invalid request: " + "; ".join(str(e.get("message", e)) for e in errors)
    decode_error = _malformed_json(exc)
    if decode_error is not None:
        detail = f"the request body is malformed JSON: {decode_error}"
    body = Problem(
        type=problem_type(code),
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=exc.headers)


EXCEPTION_HANDLERS: Any = {Exception: problem_response}
