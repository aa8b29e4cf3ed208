"""Shared fixtures of the data tests: one tiny synthetic corpus per test session."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

EXPRESSIONS = ("1_neutral", "2_smile", "3_mouth_stretch")


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """2 identities x 3 expressions + 1 random (Anny's first build caches under ~/.cache/anny)."""
    from imface.corpus.synth import Recipe, write_corpus

    out = tmp_path_factory.mktemp("synth")
    write_corpus(
        out, 2, Recipe(seed=3, extra=1, only=tuple(EXPRESSIONS), population="moderate"), progress=False
    )
    return out


def load_synth(corpus, key):
    """(vertices mm, faces, metadata) of one synthetic scan."""
    mesh = trimesh.load(corpus / f"{key}.ply", process=False)
    meta = json.loads((corpus / f"{key}.json").read_text())
    return np.asarray(mesh.vertices, float), np.asarray(mesh.faces), meta


def model_frame(vertices, meta):
    t = np.asarray(meta["to_model"])
    return vertices @ t[:3, :3].T + t[:3, 3]
