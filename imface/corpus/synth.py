"""A FaceScape-like synthetic scan corpus from the Anny head model (``python -m imface synth``:
imface/corpus/cli.py).

Layout (FaceScape TU, flattened):

    DIR/corpus.json                 seed, identities, expressions, what is synthetic
    DIR/anny_faces.npy              triangles of the 4,200-vertex Anny topology (registered meshes)
    DIR/<id>/identity.json          the Anny parameters of the person
    DIR/<id>/<k>_<name>.ply         the scan: mm, model axes, origin at Anny's (neck) origin
    DIR/<id>/<k>_<name>.json        identity, expression, neutral, action weights, 68 landmarks
                                    (scan frame, mm), their vertex indices, to_model (4x4)
    DIR/<id>/<k>_<name>.reg.npy     the registered 4,200-vertex mesh (scan frame, mm, float32)

A scan is the Anny head (identity x expression recipe from resources/expressions.json, with small
per-scan jitter), Loop-subdivided twice, displaced by procedural detail (imface/data/detail.py:
synthetic wrinkles, folds and skin relief), cropped to the front of the head (110 mm around the
model origin, like a frontal scanner). Each identity draws from its own seeded generator, so the
corpus is deterministic for a seed whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from imface.corpus import anny_head
from imface.corpus.detail import displacement_mm
from imface.errors import UserError
from imface.jobs import Job, Progress, drive_with_tqdm
from imface.scan.align import nose_apex
from imface.scan.template import UPPER_Y
from imface.units import MM_PER_UNIT, NOSE_MODEL

SCAN_RADIUS = 1.1  # model units kept in the written scan (a frontal scanner's field)
# Anny's head without eyes has 25 mm deep sockets where the eyes belong; real scans show
# eyeballs (or closed lids). An eyeball of 12 mm radius sits behind the midpoint of the eye
# corners so its front is 1.5 mm ahead of it, about where a cornea shows between the lids.
EYEBALL_RADIUS_MM = 12.0
EYEBALL_BEHIND_MM = 10.5
EYE_CORNERS = ((36, 39), (42, 45))  # iBUG-68 corners of each eye


@dataclass
class SynthScan:
    vertices: np.ndarray  # (V, 3) mm, scan frame
    faces: np.ndarray  # (F, 3)
    registered: np.ndarray  # (4200, 3) mm, scan frame
    landmarks68: np.ndarray  # (68, 3) mm, scan frame
    to_model: np.ndarray  # (4, 4) scan frame -> model frame
    nose_tip: np.ndarray  # (3,) mm, scan frame: goes to (0, 0, 0.4)


def refine_frame(v_mm, faces, r0, nose_mm):
    """Refine a frontal rotation by the aligner's own criterion: the rigid surface fit of the
    upper face to the template (point-to-plane ICP started from the correspondence fit r0)."""
    from scipy.spatial import cKDTree

    from imface.scan.align import scan_points
    from imface.scan.icp import trimmed_icp
    from imface.scan.template import template

    tmpl = template()
    m = to_model_transform(nose_mm, r0)
    pts = scan_points(v_mm, faces, rng=np.random.default_rng(0))
    nose = nose_apex(pts @ m[:3, :3].T + m[:3, 3])
    if nose is not None:
        m[:3, 3] += NOSE_MODEL - nose
    m = trimmed_icp(cKDTree(pts), pts, tmpl, tmpl.upper, m, 15, 0.1, False, plane=True, upper=True)[0]
    return m[:3, :3] * MM_PER_UNIT


def to_model_transform(nose_mm: np.ndarray, rotation=None) -> np.ndarray:
    """mm scan frame (model axes) -> model frame: rotate, scale 1/100, nose tip to (0, 0, 0.4)."""
    r = np.eye(3) if rotation is None else rotation
    t = np.eye(4)
    t[:3, :3] = r / MM_PER_UNIT
    t[:3, 3] = NOSE_MODEL - r @ nose_mm / MM_PER_UNIT
    return t


class Generator:
    """Anny + subdivision + detail; one per process."""

    def __init__(self, subdivisions: int = 2, eyeballs: bool = True):
        import trimesh

        self.model = anny_head.build_model()
        self.faces = anny_head.anny_faces(self.model)
        self.landmarks = anny_head.load_landmarks()
        self.expressions = anny_head.load_expressions()
        self.pool = json.loads(anny_head.EXPRESSIONS_FILE.read_text())["random_pool"]
        self.subdivisions = subdivisions
        self.eyeball = trimesh.creation.icosphere(3, EYEBALL_RADIUS_MM) if eyeballs else None
        mean = anny_head.Identity({k: 0.5 for k in self.model.phenotype_labels}, {})
        base = anny_head.anny_vertices(self.model, mean, {}) * 1000.0
        base -= base[self.landmarks.nose_tip]
        canon, self.sub_faces = self._subdivide(base)
        self.canon = canon  # mm, nose tip at 0
        self.canon_lm = base[self.landmarks.indices]
        self.base = base
        # Face region used to define each person's frontal frame (as the aligner's template).
        normals = trimesh.Trimesh(base, self.faces, process=False).vertex_normals
        self.frame_mask = (
            (np.linalg.norm(base - [0, 0, -40.0], axis=1) < 95)
            & (normals[:, 2] > 0.2)
            & (base[:, 1] > UPPER_Y * MM_PER_UNIT)
        )
        self._frames: dict[int, np.ndarray] = {}
        self._trimesh = trimesh

    def _subdivide(self, vertices):
        import trimesh

        if self.subdivisions == 0:
            return vertices, self.faces
        # Loop subdivision keeps the original vertices first (smoothed), so the first 4,200 rows
        # stay the registered Anny topology.
        return trimesh.remesh.subdivide_loop(vertices, self.faces, iterations=self.subdivisions)

    def frame(self, identity: anny_head.Identity) -> np.ndarray:
        """The rotation making this person's neutral face frontal: the rigid fit of its upper
        face (above the upper lip) to the average face, first through the shared topology,
        then refined on the surface as the aligner does. Anny's head tilt varies with the
        phenotype; without this the 'true' pose of a synthetic scan would be arbitrary."""
        key = identity.detail_seed
        if key not in self._frames:
            from imface.scan.icp import similarity

            v = anny_head.anny_vertices(self.model, identity, {}) * 1000.0
            _, r, _ = similarity(v[self.frame_mask], self.base[self.frame_mask], scale=1.0)
            self._frames[key] = refine_frame(v, self.faces, r, v[self.landmarks.nose_tip])
        return self._frames[key]

    def scan(self, identity: anny_head.Identity, actions: dict[str, float]) -> SynthScan:
        v = anny_head.anny_vertices(self.model, identity, actions) * 1000.0
        dense, faces = self._subdivide(v)
        mesh = self._trimesh.Trimesh(dense, faces, process=False)
        disp = displacement_mm(
            self.canon, self.canon_lm, actions, identity.age_wrinkles, identity.detail_seed
        )
        dense = dense + mesh.vertex_normals * disp[:, None]
        registered = dense[: len(v)]
        lms = registered[self.landmarks.indices]
        # The nose tip is the apex of the nose (as the aligner finds it), not vertex 30 exactly.
        rot = self.frame(identity)
        rough = to_model_transform(lms[30], rot)
        apex = nose_apex(dense @ rough[:3, :3].T + rough[:3, 3])
        nose = lms[30] if apex is None else np.linalg.solve(rough[:3, :3], apex - rough[:3, 3])
        to_model = to_model_transform(nose, rot)
        if self.eyeball is not None:
            dense, faces = self._add_eyeballs(dense, faces, lms, rot)
        keep_v = np.linalg.norm(dense @ to_model[:3, :3].T + to_model[:3, 3], axis=1) < SCAN_RADIUS
        keep_f = keep_v[faces].all(1)
        used = np.unique(faces[keep_f])
        remap = np.full(len(dense), -1)
        remap[used] = np.arange(len(used))
        return SynthScan(dense[used], remap[faces[keep_f]], registered, lms, to_model, nose)

    def _add_eyeballs(self, vertices, faces, lms, rotation):
        """Append one sphere per eye (vertices after the registered rows, so the first 4,200
        rows stay the Anny topology)."""
        forward = rotation.T @ np.array([0.0, 0.0, 1.0])  # the face's +z in the scan frame
        parts_v, parts_f, offset = [vertices], [faces], len(vertices)
        for a, b in EYE_CORNERS:
            centre = (lms[a] + lms[b]) / 2 - EYEBALL_BEHIND_MM * forward
            parts_v.append(self.eyeball.vertices + centre)
            parts_f.append(self.eyeball.faces + offset)
            offset += len(self.eyeball.vertices)
        return np.concatenate(parts_v), np.concatenate(parts_f)


@lru_cache(maxsize=1)
def _generator(subdivisions: int, eyeballs: bool = True) -> Generator:
    return Generator(subdivisions, eyeballs)


def identity_name(i: int) -> str:
    return f"{i + 1:03d}"


def scan_plan(gen: Generator, rng: np.random.Generator, extra: int, only=None):
    """(expression name, action weights) of one person's scans: 20 recipes + `extra` random.
    `only` keeps a subset of the recipes (the random draws stay the same)."""
    plan = []
    for name, recipe in gen.expressions.items():
        jitter = {k: float(np.clip(w * rng.uniform(0.85, 1.1), 0, 1)) for k, w in recipe.items()}
        if only is None or name in only:
            plan.append((name, jitter))
    for j in range(extra):
        n = int(rng.integers(2, 5))
        picks = rng.choice(len(gen.pool), n, replace=False)
        actions = {gen.pool[p]: float(rng.uniform(0.2, 0.9)) for p in picks}
        plan.append((f"{len(gen.expressions) + 1 + j}_random", actions))
    return plan


@dataclass(frozen=True)
class Recipe:
    """What every person of a corpus shares (recorded in corpus.json)."""

    seed: int = 0
    extra: int = 2  # random expressions per person besides the 20 FaceScape ones
    subdivisions: int = 2
    only: tuple[str, ...] | None = None  # subset of the 20 expressions
    population: str = "mixed"  # anny_head.POPULATIONS
    eyeballs: bool = True
    variants: float = 0.0  # fraction of scans made "as scanned": light noise, small holes


def make_identity(job: tuple[int, str, Recipe]) -> list[str]:
    """Write every scan of identity `index`; returns the written keys (skips finished ones)."""
    index, out, recipe = job
    import trimesh

    gen = _generator(recipe.subdivisions, recipe.eyeballs)
    rng = np.random.default_rng([recipe.seed, index])
    ident = anny_head.sample_identity(gen.model, rng, recipe.population)
    name = identity_name(index)
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    _write_text(folder / "identity.json", json.dumps(ident.to_dict(), indent=1))
    keys = []
    for number, (expr, actions) in enumerate(scan_plan(gen, rng, recipe.extra, recipe.only)):
        meta_path = folder / f"{expr}.json"
        keys.append(f"{name}/{expr}")
        if meta_path.exists():  # written last: the scan is complete
            continue
        s = gen.scan(ident, actions)
        # its own stream: a corpus without variants is the same as before they existed
        variant_rng = np.random.default_rng([recipe.seed, index, number, 7])
        vertices, faces, variant = as_scanned(s.vertices, s.faces, variant_rng, recipe.variants)
        trimesh.Trimesh(vertices.astype(np.float32), faces, process=False).export(folder / f"{expr}.ply")
        np.save(folder / f"{expr}.reg.npy", s.registered.astype(np.float32))
        meta = {
            "identity": name,
            "expression": expr,
            "neutral": expr == "1_neutral",
            "actions": actions,
            "unit": "mm",
            "synthetic": True,
            "landmarks68": s.landmarks68.round(4).tolist(),
            "nose_tip": s.nose_tip.round(4).tolist(),
            "landmark_vertex_indices": gen.landmarks.indices.tolist(),
            "to_model": s.to_model.tolist(),
            "variant": variant,
        }
        _write_text(meta_path, json.dumps(meta))
    return keys


NOISE_MM = (0.05, 0.3)  # std of the normal noise of a variant scan
HOLES = (1, 4)  # small holes per variant scan
HOLE_RADIUS_MM = (2.0, 7.0)


def as_scanned(vertices, faces, rng: np.random.Generator, fraction: float):
    """With probability `fraction`, the scan as a scanner gives it: noise along the normals
    and a few small holes (missed patches: a shiny spot, a shadowed nostril) away from the
    mesh's edge. Returns (vertices, faces, variant name or None); the registration, landmarks
    and frame stay those of the clean face."""
    if fraction <= 0 or rng.uniform() >= fraction:
        return vertices, faces, None
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    noise = rng.uniform(*NOISE_MM)
    vertices = vertices + mesh.vertex_normals * rng.normal(scale=noise, size=(len(vertices), 1))
    centres = mesh.triangles_center
    keep = np.ones(len(faces), bool)
    for _ in range(int(rng.integers(HOLES[0], HOLES[1] + 1))):
        centre = centres[rng.integers(len(centres))]
        keep &= np.linalg.norm(centres - centre, axis=1) > rng.uniform(*HOLE_RADIUS_MM)
    return vertices, faces[keep], f"noise {noise:.2f} mm, {int((~keep).sum())} faces removed"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_corpus(out: Path, identities: int, *args, progress: bool = True, **kwargs) -> list[str]:
    """`write_corpus_job` run to its end (a tqdm bar unless `progress` is False): the scan keys."""
    return drive_with_tqdm(write_corpus_job(out, identities, *args, **kwargs), disable=not progress)


def write_corpus_job(
    out: Path, identities: int, recipe: Recipe = Recipe(), workers: int = 1, first: int = 0
) -> Job[list[str]]:
    """The corpus as a job: one Progress record per finished person; closing it stops the
    workers (people already written stay, each complete). People are numbered from `first`
    (0-based): a second corpus with the same seed and a later `first` holds new people, so it
    extends the first one (prepare both into one cache)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    yield Progress("Synthesising people", 0, identities, "building the Anny head")
    gen = _generator(recipe.subdivisions, recipe.eyeballs)  # builds Anny once (fills its asset cache)
    np.save(out / "anny_faces.npy", gen.faces.astype(np.int32))
    if recipe.only is not None:
        unknown = sorted(set(recipe.only) - set(gen.expressions))
        if unknown:
            raise UserError(f"unknown expressions {', '.join(unknown)} (see {anny_head.EXPRESSIONS_FILE})")
    if recipe.population not in anny_head.POPULATIONS:
        raise UserError(f"--population must be one of {', '.join(anny_head.POPULATIONS)}")
    jobs = [(i, str(out), recipe) for i in range(first, first + identities)]
    keys: list[str] = []
    for done, person_keys in enumerate(_people(jobs, workers), 1):
        keys += person_keys
        yield Progress("Synthesising people", done, identities, f"{len(keys)} scans")
    info = {
        "kind": "imface-synthetic-anny",
        "identities": identities,
        "first_identity": identity_name(first),
        **{k: v for k, v in dataclasses.asdict(recipe).items() if k != "only"},
        "extra_expressions": recipe.extra,
        "expressions": list(recipe.only or gen.expressions),
        "scans": len(keys),
        "synthetic": "everything: Anny head shapes and blendshapes; eyeballs are spheres; procedural "
        "wrinkles, folds and skin relief (imface/corpus/detail.py)",
    }
    _write_text(out / "corpus.json", json.dumps(info, indent=1))
    return keys


def _people(jobs, workers: int):
    """The scan keys of each person as they finish, in order."""
    if workers <= 1:
        for job in jobs:
            yield make_identity(job)
        return
    # Fresh interpreters, not fork: a child forked after torch and Anny started their thread
    # pools can wait forever on a lock held by a thread that does not exist in the child.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(make_identity, jobs)
    finally:  # a cancelled job drops the people not yet started
        pool.shutdown(wait=True, cancel_futures=True)
