"""Errors with the exit code the CLI maps them to.

Every failure the user can cause or meet has its own class, so the CLI prints one line and exits
with a documented code instead of a traceback.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_BUDGET_UNREACHABLE = 3
EXIT_VERIFY_FAILED = 4
EXIT_GATE_FAILED = 5


class AutochunkError(Exception):
    """Base class: a problem explained in one line; `exit_code` is what the CLI returns."""

    exit_code = EXIT_INTERNAL


class BadInputError(AutochunkError):
    """The model, a flag or a path given by the user is unusable (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class BudgetUnreachableError(AutochunkError):
    """No plan brings the estimated peak under the budget (exit 3)."""

    exit_code = EXIT_BUDGET_UNREACHABLE

    def __init__(self, message: str, best_plan=None, result=None):
        super().__init__(message)
        self.best_plan = best_plan
        self.result = result  # the API's result so far (budget, input shapes), for reports


class VerificationError(AutochunkError):
    """The chunked model's outputs differ from the original's (exit 4)."""

    exit_code = EXIT_VERIFY_FAILED

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class GateError(AutochunkError):
    """Outputs match, but a regression gate (--max-mem-ratio, --max-latency-ratio, --max-peak)
    failed or could not be checked (exit 5). `result` is the API's result (the model is written)."""

    exit_code = EXIT_GATE_FAILED

    def __init__(self, message: str, result=None, gates=None):
        super().__init__(message)
        self.result = result
        self.gates = gates or []
