"""The run folder of ``imface train --out RUN``: one place that names its files and reads them.

RUN/config.json        the TrainConfig (written atomically when the run starts)
RUN/split.json         the held-out split: the exact training scan keys and held-out people
RUN/log.jsonl          one JSON line per logged step (cut back to the resumed step on --resume)
RUN/state.safetensors  everything needed to resume exactly (weights, codes, optimiser, step)
RUN/model.safetensors  the inference checkpoint (``imface.io`` format)
RUN/tensorboard/       TensorBoard scalars, when tensorboard is installed
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from imface.errors import UserError
from imface.paths import atomic_write_text

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
LOG_FILE = "log.jsonl"
STATE_FILE = "state.safetensors"
MODEL_FILE = "model.safetensors"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def split(self) -> Path:
        return self.root / SPLIT_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    def holds_run(self) -> bool:
        """True once training has saved a state here (a new run must not overwrite it)."""
        return self.state.exists()

    # -- config -------------------------------------------------------------------------------
    def write_config(self, cfg) -> None:
        atomic_write_text(self.config, json.dumps(cfg.to_dict(), indent=2))

    def read_config(self):
        from imface.config import TrainConfig

        data = self._read_json(self.config, "the run's training config")
        try:
            return TrainConfig.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{self.config}: invalid training config ({exc})") from None

    # -- split --------------------------------------------------------------------------------
    def write_split(self, requested: float, train_keys: list[str], test_identities: list[str]) -> None:
        record = {"requested": requested, "train_keys": train_keys, "test_identities": test_identities}
        atomic_write_text(self.split, json.dumps(record, indent=1))

    def read_split(self) -> dict | None:
        """The stored split, or None for a run from before splits were stored."""
        if not self.split.exists():
            return None
        data = self._read_json(self.split, "the run's held-out split")
        if not _valid_split(data):
            raise UserError(
                f"{self.split}: corrupt split (expected 'requested' and the lists 'train_keys', "
                "'test_identities')"
            )
        return data

    # -- log ----------------------------------------------------------------------------------
    def append_log(self, record: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict]:
        """Every complete record (a line cut by a crash is skipped)."""
        if not self.log.exists():
            return []
        records = []
        for line in self.log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
        return records

    def trim_log(self, step: int) -> None:
        """Keep the records up to `step`: the steps after it are about to be trained again."""
        if not self.log.exists():
            return
        kept = [r for r in self.read_log() if r["step"] <= step]
        atomic_write_text(self.log, "".join(json.dumps(r) + "\n" for r in kept))

    @staticmethod
    def _read_json(path: Path, what: str):
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: cannot read {what} ({exc})") from None


def _valid_split(data) -> bool:
    if not isinstance(data, dict):
        return False
    requested = data.get("requested")
    number = isinstance(requested, int | float) and not isinstance(requested, bool)
    return number and _strings(data.get("train_keys")) and _strings(data.get("test_identities"))


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
