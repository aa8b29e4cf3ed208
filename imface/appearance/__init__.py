"""Appearance of faces: colour in template space (albedo, from coloured scans) and an image-based
radiance field driven by the codes (radiance, render, training; `python -m imface appearance`)."""

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
