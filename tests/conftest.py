import os

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def face_model():
    """A tiny face-like ImFace (template overfitted to a toy face, random warps); shared by tests."""
    from imface.config import ModelConfig
    from imface.testing import face_like_model

    return face_like_model(ModelConfig.tiny(), steps=150)
