"""The ImFace / ImFace++ network: SIREN local nets, hyper nets, Neural Blend-Fields, warps."""

from imface.model.imface import (
    Codes,
    ImFace,
    ImFaceOutput,
    PreparedCodes,
    parameter_count,
    spatial_gradient,
)
from imface.model.warp import se3_apply, se3_matrix

__all__ = [
    "Codes",
    "ImFace",
    "ImFaceOutput",
    "PreparedCodes",
    "parameter_count",
    "se3_apply",
    "se3_matrix",
    "spatial_gradient",
]
