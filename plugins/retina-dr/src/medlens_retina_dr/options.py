"""Run options of ``retina-dr`` (API 1.1 typed options; light: pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RetinaOptions"]


class RetinaOptions(BaseModel):
    """Options a caller may give ``retina-dr``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operating_point: Literal["screening", "balanced"] = Field(
        default="screening",
        description="Threshold that decides 'referable' (screening: sensitivity >= 0.87).",
    )
