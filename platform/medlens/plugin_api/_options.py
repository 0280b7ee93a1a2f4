"""Typed run options (API 1.1): the host's own, and each plugin's declared model.

Run options are a flat mapping (CLI ``--option``, ``Host.run(options=...)``). The
host's keys are validated by :class:`HostOptions`; every other key belongs to the
plugin and is validated by the pydantic model it declares (``Manifest.options`` as
``"module:attr"``, or an ``Options`` attribute of the plugin object). A key neither
knows is an error naming it: a typo never passes silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from medlens.plugin_api._vocab import ExplanationMethod

__all__ = ["HostOptions"]

# Where windows are stitched: a torch device the engine knows (whether it exists here is
# checked by the host before the run).
_DEVICE = r"^(cpu|cuda(:[0-9]+)?|mps)$"


class HostOptions(BaseModel):
    """Options the host and its engine read (any plugin may be given them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse ``true``/``false`` for a number: pydantic would read them as 1 and 0."""
        field = cls.model_fields[str(info.field_name)]
        if isinstance(value, bool) and "bool" not in str(field.annotation):
            raise ValueError("a boolean is not a value of this option")
        return value

    explain: bool | None = Field(
        default=None, description="Compute an explanation [yes if the plugin supports one]."
    )
    explain_method: ExplanationMethod | None = Field(
        default=None, description="gradcam, gradcam++ or layercam [the manifest's first]."
    )
    explain_sanity: bool = Field(default=True, description="Run the randomisation check.")
    explain_randomisation: Literal["cascading", "full"] = Field(
        default="cascading", description="Weight randomisation of the sanity check."
    )
    explain_seed: int = Field(default=0, ge=0, description="Seed of the sanity check.")
    explain_precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Precision of the explanation's passes before the target layer "
        "[auto: bfloat16 where the processor has it natively].",
    )
    faithfulness_fraction: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="Fraction deleted by the faithfulness score."
    )
    roi_size: tuple[Annotated[int, Field(ge=1, le=1024)], ...] | None = Field(
        default=None,
        min_length=1,
        description="Window size override (voxels, each 1-1024: 100000 asked the engine for "
        "petabytes on every case).",
    )
    overlap: float | None = Field(
        default=None,
        ge=0.0,
        le=0.9,
        description="Window overlap override, at most 0.9 (0.999 makes a window per voxel: "
        "a run of days).",
    )
    blend: Literal["gaussian", "constant"] | None = Field(
        default=None, description="Window blending override."
    )
    sw_batch_size: int | None = Field(default=None, ge=1, description="Windows per pass.")
    amp: bool | None = Field(
        default=None,
        description="Autocast: on GPU [the manifest's], or bfloat16 on a CPU with native "
        "bfloat16 [off].",
    )
    channels_last: bool | None = Field(default=None, description="channels_last memory format.")
    stitch_device: str | None = Field(
        default=None,
        pattern=_DEVICE,
        description="Device that stitches windows (cpu, cuda[:N], mps).",
    )
    operating_point: str | None = Field(
        default=None,
        min_length=1,
        description="Operating point deciding findings [the manifest's default].",
    )
