"""Appearance of faces: colour in template space (albedo)."""

from imface.appearance.albedo import (
    NEUTRAL_RGB,
    Albedo,
    albedo_for_codes,
    albedo_path_for_codes,
    colours_for,
    transfer_colours,
)

__all__ = [
    "NEUTRAL_RGB",
    "Albedo",
    "albedo_for_codes",
    "albedo_path_for_codes",
    "colours_for",
    "transfer_colours",
]
