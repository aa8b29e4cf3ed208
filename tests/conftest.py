import os

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# small tensors: one thread avoids OpenMP spin-waiting, which is slow on a busy 2-core machine
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def face_model():
    """A tiny face-like ImFace (template overfitted to a toy face, random warps); shared by tests."""
    from imface.config import ModelConfig
    from imface.testing import face_like_model

    return face_like_model(ModelConfig.tiny(), steps=150)


@pytest.fixture(scope="session")
def face_session(face_model):
    """A real imface.session.Session on the tiny face-like model (what the editor tests drive)."""
    from imface.testing import tiny_session

    return tiny_session(face_model)
