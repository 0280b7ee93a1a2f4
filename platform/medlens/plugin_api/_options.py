"""Typed run options (API 1.1): the host's own, and each plugin's declared model.

Run options are a flat mapping (CLI ``--option``, ``Host.run(options=...)``). The
host's keys are validated by :class:`HostOptions`; every other key belongs to the
plugin and is validated by the pydantic model it declares (``Manifest.options`` as
``"module:attr"``, or an ``Options`` attribute of the plugin object). A key neither
knows is an error naming it: a typo never passes silently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HostOptions"]


class HostOptions(BaseModel):
    """Options the host and its engine read (any plugin may be given them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    explain: bool | None = Field(
        default=None, description="Compute an explanation [yes if the plugin supports one]."
    )
    explain_method: str | None = Field(
        default=None, description="gradcam, gradcam++ or layercam [the manifest's first]."
    )
    explain_sanity: bool = Field(default=True, description="Run the randomisation check.")
    explain_randomisation: Literal["cascading", "full"] = Field(
        default="cascading", description="Weight randomisation of the sanity check."
    )
    explain_seed: int = Field(default=0, description="Seed of the sanity check.")
    explain_precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Precision of the explanation's passes before the target layer "
        "[auto: bfloat16 where the processor has it natively].",
    )
    faithfulness_fraction: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="Fraction deleted by the faithfulness score."
    )
    roi_size: tuple[int, ...] | None = Field(default=None, description="Window size override.")
    overlap: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Window overlap override."
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
    stitch_device: str | None = Field(default=None, description="Device that stitches windows.")
    operating_point: str | None = Field(
        default=None, description="Operating point deciding findings [the manifest's default]."
    )
