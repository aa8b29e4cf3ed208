"""Live morphing that never returns a torn mesh: the morph engine's step, local re-projection of
the vertices it did not place, and the last good vertices when the result still tears."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from imface.codes import FaceCodes
from imface.extract.grid import Mesh
from imface.extract.morph import MorphEngine
from imface.extract.repair import (
    MAX_HIDDEN_FACES,
    MORPH_RADIUS,
    adjacency,
    check_mesh,
    edge_bound,
    repair_morph,
    stretched_faces,
    visible_part,
)
from imface.units import REGION_RADIUS

if TYPE_CHECKING:
    from imface.session import Session


@dataclass
class MorphFrame:
    """One live-morph step: the vertices to show and whether they are the new face."""

    vertices: np.ndarray
    sound: bool  # False: the morph tore; `vertices` are the last good ones
    failed: int  # vertices the morph engine did not place
    repaired: int  # of those, placed by local re-projection
    reason: str = ""
    hidden: np.ndarray | None = None  # (F,) bool: faces stretched across a topology change, not drawn


RIM_RADIUS = 0.9 * REGION_RADIUS


class Morpher:
    """Live morphing of one mesh topology that never returns a torn mesh: unconverged vertices are
    re-projected locally; when the result still tears, the last good vertices come back with
    ``sound=False`` and the caller re-extracts."""

    def __init__(self, session: Session, base: Mesh, base_codes: FaceCodes):
        self.session = session
        self.base = base
        self.faces = base.faces
        self.max_edge = edge_bound(base.vertices, base.faces)
        self._graph = adjacency(base.faces, len(base.vertices))
        # faces along the crop's rim (a vertex within 10 mm of the region's edge): where the face
        # narrows or widens under an identity drag their vertices have no surface to follow, so
        # hiding them until the re-mesh is not counted against MAX_HIDDEN_FACES
        rim = np.linalg.norm(base.vertices, axis=1) > RIM_RADIUS
        self._rim_faces = rim[base.faces].any(1)
        self.last_good = base.vertices.copy()
        with session.lock:
            self._engine = MorphEngine(session.model, base, session.torch_codes(base_codes))

    def morph(self, codes: FaceCodes, preview: bool = True) -> MorphFrame:
        s = self.session
        with s.lock:
            torch_codes = s.torch_codes(codes)
            result = self._engine.morph(torch_codes, preview=preview)
            prep = self._engine.last_prepared
            repair = repair_morph(
                s.model,
                prep,
                result.vertices,
                result.converged,
                self.last_good,
                self.faces,
                self.max_edge,
                graph=self._graph,
            )
        hidden = None
        if not repair.sound:
            hidden = self._hideable(repair.vertices)
            if hidden is None:
                reason = repair.soundness.reason
                return MorphFrame(self.last_good, False, repair.failed, repair.repaired, reason)
        self.last_good = repair.vertices
        return MorphFrame(repair.vertices, True, repair.failed, repair.repaired, hidden=hidden)

    def _hideable(self, vertices: np.ndarray) -> np.ndarray | None:
        """The stretched faces when hiding them leaves a sound mesh (few of them, every vertex
        in the region), else None."""
        outside = np.linalg.norm(vertices, axis=1) > MORPH_RADIUS
        hidden = stretched_faces(vertices, self.faces, self.max_edge) | outside[self.faces].any(1)
        if (hidden & ~self._rim_faces).mean() > MAX_HIDDEN_FACES:
            return None
        visible = check_mesh(*visible_part(vertices, self.faces, hidden), self.max_edge, MORPH_RADIUS)
        return hidden if visible.sound else None
