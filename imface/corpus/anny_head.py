"""The Anny head model as a face generator: identities, expressions, and the model-frame axes.

Anny (PyPI ``anny``) is z-up, looks along -y, in metres. The model frame looks along +z with y up,
so ``anny_to_model_axes`` is a fixed rotation of -90 degrees about x (x is kept: the subject's
right is -x in both). Building the model parses MakeHuman assets once (~30-100 s, cached under
~/.cache/anny); a forward pass for one face takes ~15 ms on CPU.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
EXPRESSIONS_FILE = RESOURCES / "expressions.json"
LANDMARKS_FILE = RESOURCES / "anny_landmarks68.json"

# Local changes that move the whole head (its angle, its place) would change the frame itself;
# identity sampling leaves them out so that every synthetic face shares the canonical axes.
_FACE_PREFIXES = (
    "cheek",
    "chin",
    "eyebrows",
    "forehead",
    "head",
    "mouth",
    "nose",
    "l-eye",
    "r-eye",
    "l-cheek",
    "r-cheek",
    "l-ear",
    "r-ear",
)
_FRAME_CHANGES = ("head-angle-out", "head-trans-forward", "head-trans-up", "head-trans-out")

# Anny axes -> model axes: (x, y, z) -> (x, z, -y).
ANNY_TO_MODEL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

_lock = threading.Lock()


@lru_cache(maxsize=1)
def build_model():
    """The Anny head model (built once per process; the asset cache makes later builds fast)."""
    import anny

    with _lock:
        return anny.Anny(
            rig="makehuman-head",
            topology="head-noeyes-notongue",
            local_changes="all",
            facial_actions="all",
        )


def face_change_labels(model) -> list[str]:
    return [
        label
        for label in model.local_change_labels
        if label.startswith(_FACE_PREFIXES) and label not in _FRAME_CHANGES
    ]


def action_labels() -> list[str]:
    from anny.models.facial_actions import FACIAL_ACTION_LABELS

    return list(FACIAL_ACTION_LABELS)


@dataclass
class Identity:
    """Anny parameters of one person: phenotype values in [0, 1], local changes in [-1, 1]."""

    phenotype: dict[str, float]
    local_changes: dict[str, float]
    detail_seed: int = 0  # seeds the procedural skin detail of this person
    age_wrinkles: float = 0.5  # depth factor of expression folds (older skin folds deeper)
    population: str = "moderate"  # which sampler drew this person

    def to_dict(self) -> dict:
        return {
            "population": self.population,
            "phenotype": self.phenotype,
            "local_changes": self.local_changes,
            "detail_seed": self.detail_seed,
            "age_wrinkles": self.age_wrinkles,
        }


POPULATIONS = ("moderate", "wide", "mixed")


def sample_identity(model, rng: np.random.Generator, population: str = "moderate") -> Identity:
    """One adult. "moderate": Gaussian around the average, clipped, so no caricatures (the first
    corpus). "wide": Anny's whole adult range: phenotypes (sex, age, muscle, weight, height,
    proportions) uniform over most of their range, larger local changes, more asymmetry.
    "mixed": each person is moderate or wide with equal odds. Left and right changes share
    their value up to an asymmetry, as in real faces."""
    if population == "mixed":
        population = "wide" if rng.random() < 0.5 else "moderate"
    if population == "moderate":
        pheno = {k: float(np.clip(0.5 + rng.normal(0, 0.15), 0.15, 0.85)) for k in model.phenotype_labels}
        pheno["age"] = float(rng.uniform(0.45, 0.9))  # adults (0.5 ~ 25 years in Anny)
        sigma, limit, asymmetry = 0.2, 0.5, 0.04
    elif population == "wide":
        pheno = {k: float(rng.uniform(0.03, 0.97)) for k in model.phenotype_labels}
        pheno["age"] = float(rng.uniform(0.45, 1.0))
        sigma, limit, asymmetry = 0.35, 0.9, 0.12
    else:
        raise ValueError(f"population must be one of {', '.join(POPULATIONS)}, not {population!r}")
    changes: dict[str, float] = {}
    for label in face_change_labels(model):
        if label.startswith("r-") and "l-" + label[2:] in changes:
            value = changes["l-" + label[2:]] + rng.normal(0, asymmetry)
        else:
            value = rng.normal(0, sigma)
        changes[label] = float(np.clip(value, -limit, limit))
    age_wrinkles = float(np.clip(0.3 + (pheno["age"] - 0.45) * 1.5 + rng.normal(0, 0.1), 0.2, 1.2))
    return Identity(pheno, changes, int(rng.integers(2**31)), age_wrinkles, population)


def anny_vertices(model, identity: Identity, actions: dict[str, float]):
    """Vertices (4200, 3) in metres, already rotated to model axes (not yet translated)."""
    import torch

    pose = torch.eye(4, dtype=model.dtype)[None, None].repeat(1, model.bone_count, 1, 1)
    with torch.no_grad():
        out = model(
            pose_parameters=pose,
            phenotype_kwargs=identity.phenotype,
            local_changes_kwargs=identity.local_changes,
            facial_actions={k: float(v) for k, v in actions.items()},
        )
    verts = out["vertices"][0].double().cpu().numpy()
    return verts @ ANNY_TO_MODEL.T


def anny_faces(model) -> np.ndarray:
    return np.asarray(model.faces.cpu().numpy(), dtype=np.int64)


def load_expressions(path: Path = EXPRESSIONS_FILE) -> dict[str, dict[str, float]]:
    """FaceScape expression name (``<k>_<name>``) -> ARKit action weights (the editable recipes)."""
    data = json.loads(Path(path).read_text())
    return {name: dict(recipe) for name, recipe in data["expressions"].items()}


@dataclass
class LandmarkSet:
    """The 68 iBUG-style landmark vertices on the Anny head topology."""

    indices: np.ndarray  # (68,) vertex indices
    nose_tip: int = field(init=False)

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.nose_tip = int(self.indices[30])


def load_landmarks(path: Path = LANDMARKS_FILE) -> LandmarkSet:
    return LandmarkSet(json.loads(Path(path).read_text())["indices"])
