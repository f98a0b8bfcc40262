"""The agent's one error type: a request that fails with a stable error code."""

from __future__ import annotations

from contract.protocol import ErrorCode


class AgentError(Exception):
    """A request that fails with a stable error code (becomes an ``Err`` reply)."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
