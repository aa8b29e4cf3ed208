"""The model frame and units, defined once (ImFace convention).

1 model unit = 100 mm; the origin lies 40 mm behind the nose tip, so the nose tip sits at
(0, 0, 0.4); the face looks along +z with y up and lies inside the unit sphere. Files are read
and written in their own unit: metres per file unit are in ``UNITS``.
"""

from __future__ import annotations

import numpy as np

MM_PER_UNIT = 100.0  # millimetres per model unit
NOSE_MODEL = np.array([0.0, 0.0, 0.4])  # the nose tip in the model frame
REGION_RADIUS = 1.0  # model units: the 100 mm sphere scans are cropped to and compared in
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}  # metres per file unit
GLTF_UNIT = "m"  # glTF is metres by its specification


def mm_to_model(points_mm):
    return np.asarray(points_mm) / MM_PER_UNIT


def model_to_mm(points):
    return np.asarray(points) * MM_PER_UNIT
