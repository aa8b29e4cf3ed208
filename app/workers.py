"""Background work: jobs in threads (fit, export, loading), the mesh pipeline (live morphing with
latest-value coalescing), and training in a separate process (QProcess).

Workers never touch widgets or VTK: they emit numpy arrays through queued signals and the GUI
thread renders them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QObject, QProcess, QProcessEnvironment, pyqtSignal

from app import backend
from app.backend import FaceCodes, FaceModel
from imface.errors import UserError


class Cancelled(Exception):
    pass


def lower_thread_priority(nice: int = 5):
    """Background threads yield the CPU to the GUI thread (Linux: per-thread nice)."""
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


class Job(QObject):
    """One cancellable background task. `fn(job)` runs in a thread; it calls `job.report(...)`
    for progress and checks `job.cancelled` (or passes `job.cancel_event` on)."""

    progress = pyqtSignal(object)
    succeeded = pyqtSignal(object)
    failed = pyqtSignal(str)
    cancelledSignal = pyqtSignal()
    finished = pyqtSignal()

    def __init__(self, title: str, fn: Callable[[Job], Any], parent: QObject | None = None):
        super().__init__(parent)
        self.title = title
        self.fn = fn
        self.cancel_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.running = False
        self.result: Any = None
        self.error: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self):
        self.cancel_event.set()

    def report(self, payload: Any):
        if self.cancelled:
            raise Cancelled()
        self.progress.emit(payload)

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, name=f"job:{self.title}", daemon=True)
        self.thread.start()

    def _run(self):
        lower_thread_priority()
        try:
            result = self.fn(self)
            if self.cancelled:
                raise Cancelled()
        except Cancelled:
            self.running = False
            self.cancelledSignal.emit()
        except UserError as exc:
            self.error = str(exc)
            self.running = False
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - surface anything as one line, log the trace
            if self.cancelled:
                self.running = False
                self.cancelledSignal.emit()
            else:
                traceback.print_exc()
                self.error = f"{type(exc).__name__}: {exc}"
                self.running = False
                self.failed.emit(self.error)
        else:
            self.result = result
            self.running = False
            self.succeeded.emit(result)
        self.finished.emit()

    def wait(self, timeout: float | None = None) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True


class JobManager(QObject):
    """Keeps the running jobs (for the progress bar, cancel, and the close confirmation)."""

    changed = pyqtSignal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.jobs: list[Job] = []

    def start(self, job: Job) -> Job:
        self.jobs.append(job)
        job.finished.connect(lambda j=job: self._done(j))
        job.start()
        self.changed.emit()
        return job

    def _done(self, job: Job):
        if job in self.jobs:
            self.jobs.remove(job)
        self.changed.emit()

    @property
    def busy(self) -> bool:
        """A job runs, or its result has not been delivered to the GUI thread yet."""
        return bool(self.jobs)

    def cancel_all(self, wait: float = 5.0):
        for j in list(self.jobs):
            j.cancel()
        deadline = time.monotonic() + wait
        for j in list(self.jobs):
            j.wait(max(0.0, deadline - time.monotonic()))


class LatestValue:
    """A one-slot mailbox: put() overwrites, take() blocks until a value (or stop)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._value: Any = None
        self._has = False
        self._stopped = False

    def put(self, value: Any):
        with self._cond:
            self._value, self._has = value, True
            self._cond.notify()

    def take(self, timeout: float | None = None):
        with self._cond:
            if not self._has and not self._stopped:
                self._cond.wait(timeout)
            if self._stopped or not self._has:
                return None
            v, self._value, self._has = self._value, None, False
            return v

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class MeshPipeline(QObject):
    """codes -> mesh, off the GUI thread. While a slider moves, `request(codes, live=True)` morphs
    the current mesh (fixed topology, cheap); `request(codes, live=False)` re-extracts (coarse then
    fine). Requests coalesce: only the newest is served; a new request cancels a running refine."""

    morphed = pyqtSignal(object, object)  # vertices (V,3), FaceCodes
    meshReady = pyqtSignal(object, object, str)  # MeshData, FaceCodes, stage
    failed = pyqtSignal(str)
    busyChanged = pyqtSignal(bool)

    def __init__(self, face_model: FaceModel, parent: QObject | None = None):
        super().__init__(parent)
        self.face_model = face_model
        self._box = LatestValue()
        self._cancel = threading.Event()
        self._morpher: backend.Morpher | None = None
        self._morph_unavailable = False
        self._thread = threading.Thread(target=self._loop, name="mesh-pipeline", daemon=True)
        self._thread.start()
        self.served = 0

    def set_face_model(self, fm: FaceModel):
        self._cancel.set()
        self.face_model = fm
        self._morpher = None
        self._morph_unavailable = False

    def request(self, codes: FaceCodes, live: bool):
        if live:
            self._cancel.set()  # a drag makes any running refine stale
        self._box.put((codes.copy(), live, self.face_model))

    def stop(self):
        self._cancel.set()
        self._box.stop()
        self._thread.join(5)

    def _loop(self):
        lower_thread_priority(2)
        while True:
            item = self._box.take()
            if item is None:
                if self._box._stopped:
                    return
                continue
            codes, live, fm = item
            self._cancel = threading.Event()
            self.busyChanged.emit(True)
            try:
                if live and self._morpher is not None and self._morpher.fm is fm:
                    verts, _ok = self._morpher.morph(codes)
                    self.morphed.emit(verts, codes)
                elif live:
                    mesh = backend.extract(fm, codes, resolution=48)
                    self.meshReady.emit(mesh, codes, "preview")
                else:
                    for stage, mesh in backend.refine(fm, codes, cancel=self._cancel):
                        if self._cancel.is_set():
                            break
                        self.meshReady.emit(mesh, codes, stage)
                        if stage == "fine":
                            self._set_morpher(fm, mesh, codes)
                self.served += 1
            except UserError as exc:
                self.failed.emit(str(exc))
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                self.failed.emit(f"mesh update failed: {type(exc).__name__}: {exc}")
            finally:
                self.busyChanged.emit(False)

    def _set_morpher(self, fm, mesh, codes):
        if self._morph_unavailable:
            return
        try:
            self._morpher = backend.Morpher(fm, mesh, codes)
        except backend.Unavailable:
            self._morph_unavailable = True
            self._morpher = None


# --------------------------------------------------------------------------------------------
# Training in its own process
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
        from PyQt6.QtCore import QTimer

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
