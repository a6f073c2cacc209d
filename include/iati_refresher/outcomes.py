"""What a stage reports per document.

Expected per-document problems (a 404, a schema-invalid file, a non-IATI root) are data:
they come back as an :class:`Outcome`, are recorded in the database, and never raise.
Only unexpected exceptions propagate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class Outcome:
    """The result of one stage for one document.

    :param status: ``ok`` (output stored), ``skipped`` (excluded by a rule: terminal until the
        document changes or an operator re-runs it) or ``failed`` (an error; ``retryable``
        says whether trying again later can help).
    :param code: a short machine-readable reason, e.g. ``http_404``, ``not_iati``, ``too_large``.
    :param message: a human explanation, shown on the status page.
    :param data: stage-specific values for the recorder (counts, hashes, report ids...).
    """

    document_id: str
    status: Status
    code: str | None = None
    message: str | None = None
    retryable: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, document_id: str, **data: Any) -> Outcome:
        return cls(document_id, "ok", data=data)

    @classmethod
    def skipped(cls, document_id: str, code: str, message: str, **data: Any) -> Outcome:
        return cls(document_id, "skipped", code=code, message=message, data=data)

    @classmethod
    def failed(cls, document_id: str, code: str, message: str, *, retryable: bool, **data: Any) -> Outcome:
        return cls(document_id, "failed", code=code, message=message, retryable=retryable, data=data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Outcome:
        return cls(**raw)
