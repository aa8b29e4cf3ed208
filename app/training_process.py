"""Training in its own process (QProcess): synth, prepare and train steps one after another,
their JSON log lines plotted as they come; stopping ends the child process hard."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from PyQt6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal


# --------------------------------------------------------------------------------------------
class TrainingProcess(QObject):
    """Runs `python -m imface synth/prepare/train` steps one after another in a child process.

    JSON lines on stdout (or new lines in RUN/log.jsonl) become `logged(dict)`; `stop()` ends the
    child (terminate, then kill). `resume=True` passes --resume to train.
    """

    logged = pyqtSignal(dict)
    text = pyqtSignal(str)
    stateChanged = pyqtSignal(str)  # running | stopped | finished | failed
    stepStarted = pyqtSignal(str)

    def __init__(self, parent: QObject | None = None, python: str | None = None):
        super().__init__(parent)
        self.python = python or sys.executable
        self.proc: QProcess | None = None
        self.steps: list[tuple[str, list[str]]] = []
        self.state = "idle"
        self.run_dir: Path | None = None
        self._buffer = b""
        self._stopping = False
        self._log_pos = 0
        self._tail = QTimer(self)
        self._tail.setInterval(500)
        self._tail.timeout.connect(self._poll_log)

    @staticmethod
    def plan(
        corpus: str,
        source: str,
        identities: int,
        work: Path,
        resume: bool,
        epochs: int | None,
        preset: str | None = None,
    ):
        """The command lines for a corpus choice ('synthetic' or 'facescape')."""
        work = Path(work)
        data, cache, run = work / "corpus", work / "cache", work / "run"
        steps: list[tuple[str, list[str]]] = []
        if not resume:
            if corpus == "synthetic":
                steps.append(
                    ("Generating corpus", ["synth", "--identities", str(identities), "--out", str(data)])
                )
                src = data
            else:
                src = Path(source)
            steps.append(("Preparing samples", ["prepare", str(src), "--out", str(cache)]))
        train = ["train", "--corpus", str(cache), "--out", str(run)]
        if epochs:
            train += ["--epochs", str(epochs)]
        if preset and not resume:
            train += ["--preset", preset]
        if resume:
            train.append("--resume")
        steps.append(("Training", train))
        return steps, run

    def start(self, steps: list[tuple[str, list[str]]], run_dir: Path):
        self.steps = list(steps)
        self.run_dir = Path(run_dir)
        self._stopping = False
        log = self.run_dir / "log.jsonl"
        self._log_pos = log.stat().st_size if log.exists() else 0  # resume: only new lines
        self._set_state("running")
        self._next()
        self._tail.start()

    def _poll_log(self):
        """RUN/log.jsonl is the trainer's record (one JSON line per logged step)."""
        if self.run_dir is None:
            return
        log = self.run_dir / "log.jsonl"
        try:
            with open(log, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._log_pos += end + 1
        for raw in data[: end + 1].splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self.logged.emit(rec)

    def _set_state(self, state: str):
        if state != "running" and hasattr(self, "_tail"):
            self._tail.stop()
            self._poll_log()
        self.state = state
        self.stateChanged.emit(state)

    def _next(self):
        if not self.steps:
            self._set_state("finished")
            return
        title, args = self.steps.pop(0)
        self.stepStarted.emit(title)
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        root = str(Path(__file__).resolve().parent.parent)
        env.insert("PYTHONPATH", root + (":" + env.value("PYTHONPATH") if env.value("PYTHONPATH") else ""))
        proc.setProcessEnvironment(env)
        proc.setWorkingDirectory(root)
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        proc.readyReadStandardOutput.connect(self._read)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._error)
        proc.started.connect(lambda: _lower_priority(proc.processId()))
        self.proc = proc
        self.text.emit(f"$ python -m imface {' '.join(args)}")
        proc.start(self.python, ["-m", "imface", *args])

    def _read(self):
        if self.proc is None:
            return
        self._buffer += bytes(self.proc.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    self.text.emit(line)
                else:
                    if isinstance(rec, dict):
                        if (
                            "step" not in rec
                            or "checkpoint" in rec
                            or not (self.run_dir / "log.jsonl").exists()
                        ):
                            self.logged.emit(rec)
                        self.text.emit(line)
                        continue
            self.text.emit(line)

    def _error(self, err):
        if err == QProcess.ProcessError.FailedToStart:
            self.text.emit("could not start the training process")
            self._set_state("failed")

    def _finished(self, code: int, status):
        self._read()
        if self._stopping:
            self._set_state("stopped")
        elif code != 0 or status != QProcess.ExitStatus.NormalExit:
            self.text.emit(f"step failed (exit code {code})")
            self.steps = []
            self._set_state("failed")
        else:
            self._next()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.state() != QProcess.ProcessState.NotRunning

    def stop(self, wait_ms: int = 3000):
        if not self.running:
            return
        self._stopping = True
        self.steps = []
        self.proc.terminate()
        if not self.proc.waitForFinished(wait_ms):
            self.proc.kill()
            self.proc.waitForFinished(wait_ms)

    def checkpoint(self) -> Path | None:
        """The newest checkpoint the run wrote."""
        if self.run_dir is None or not self.run_dir.exists():
            return None
        model = self.run_dir / "model.safetensors"  # the inference checkpoint (state.* is for resume)
        if model.exists():
            return model
        found = sorted(
            (p for p in self.run_dir.rglob("*.safetensors") if not p.name.startswith("state")),
            key=lambda p: p.stat().st_mtime,
        )
        return found[-1] if found else None


def _lower_priority(pid: int) -> None:
    """Training shares the CPU with the editor's own jobs (fits) at the same nice, below the GUI."""
    from app.workers import JOB_NICE

    try:
        os.setpriority(os.PRIO_PROCESS, pid, JOB_NICE)
    except (AttributeError, OSError):  # not on this platform, or the process already ended
        pass
