"""The one error shape of the REST API, and the handlers that give every failure that shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from fieldbridge.errors import StoreError

log = logging.getLogger("fieldbridge.web.api")

CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "store_unavailable",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="What went wrong, for scripts: e.g. not_found, forbidden.")
    message: str = Field(description="What went wrong and what to do, for people.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="More about it: e.g. the invalid fields."
    )


class ErrorResponse(BaseModel):
    """Every error the API answers, whatever the status."""

    error: ErrorDetail


class ApiError(Exception):
    """Answer `status` with the error shape."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def not_found(what: str, hint: str = "") -> ApiError:
    return ApiError(404, "not_found", f"no {what}" + (f"; {hint}" if hint else ""))


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, details=details or {}))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Validation errors as plain JSON: where, what, and the kind of check."""
    return [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "message": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = _problems(exc)
    first = problems[0] if problems else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"])
    return error_response(
        422,
        "invalid_request",
        f"{where}: {first['message']}" if where else str(first["message"]),
        {"errors": problems},
    )


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path}; the routes are listed at /api/docs"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers=headers)


async def _store(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: the store failed: %s", request.method, request.url.path, exc)
    return error_response(
        503, "store_unavailable", f"the store did not answer: {exc}", headers={"Retry-After": "5"}
    )


def install(app: FastAPI) -> None:
    """Give every failure of `app` the error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(StoreError, _store)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry for these error statuses."""
    return {
        status: {"model": ErrorResponse, "description": CODES.get(status, "error")}
        for status in statuses
    }
