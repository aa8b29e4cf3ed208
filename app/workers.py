"""Work off the GUI thread: one job runner for every long job (a QThread driving an
``imface.jobs`` generator, with progress and Cancel) and the mesh pipeline (live morphing with
latest-value coalescing, then re-extraction on release).

Workers never touch widgets or VTK: they emit numpy arrays through queued signals and the GUI
thread renders them.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any

import numpy as np
from PyQt6.QtCore import QObject, QThread, pyqtSignal

from imface.errors import UserError
from imface.extract import BandCache, LatestValue, Mesh
from imface.extract.repair import vertex_normals
from imface.jobs import Cancelled, Job, Progress, drive
from imface.session import (
    DEFAULT_QUALITY,
    PREVIEW_RESOLUTION,
    DetailMap,
    FaceCodes,
    Morpher,
    Session,
    along_normals,
)

PROGRESS_INTERVAL = 0.05  # s: at most 20 progress signals a second reach the GUI thread


JOB_NICE = 10  # a long job (fit, export) yields the CPU to the GUI while it draws
MESH_NICE = 2  # the live morph: a drag waits for it


def lower_thread_priority(nice: int = JOB_NICE):
    """Background threads yield the CPU to the GUI thread and the software rasteriser's threads
    (Linux: per-thread nice; torch's pool threads started by this thread inherit it). At nice 5
    a fit's two torch threads still took half the CPU from the frame being drawn (37 ms wall for
    10 ms of the GUI thread's own CPU); at 15 a fit starved beside a training process."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


def describe(exc: BaseException) -> str:
    """One line for the user: the message of a UserError, else the type and message."""
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


class JobThread(QThread):
    """Drives one job generator; `cancel()` closes it at its next Progress record."""

    progressed = pyqtSignal(object)  # Progress
    succeeded = pyqtSignal(object)
    failed = pyqtSignal(object)  # the exception
    cancelled = pyqtSignal()

    def __init__(self, title: str, job: Job, parent: QObject | None = None):
        super().__init__(parent)
        self.title = title
        self.job = job
        self.last: Progress | None = None
        self._stop = threading.Event()
        self._sent = 0.0

    def cancel(self):
        self._stop.set()

    @property
    def cancelling(self) -> bool:
        return self._stop.is_set()

    def _report(self, record: Progress):
        self.last = record
        now = time.monotonic()
        final = record.total is not None and record.done >= record.total
        if record.preview is not None or final or now - self._sent >= PROGRESS_INTERVAL:
            self._sent = now
            self.progressed.emit(record)

    def run(self):
        lower_thread_priority()
        try:
            result = drive(self.job, self._report, self._stop.is_set)
        except Cancelled:
            self.cancelled.emit()
        except UserError as exc:
            self.failed.emit(exc)
        except Exception as exc:  # noqa: BLE001 - any failure reaches the user as one line
            traceback.print_exc()
            self.failed.emit(exc)
        else:
            self.succeeded.emit(result)


class JobRunner(QObject):
    """Starts jobs, keeps the running ones (progress bar, Cancel, the close question)."""

    changed = pyqtSignal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.jobs: list[JobThread] = []

    def start(
        self, title: str, job: Job, on_done, on_failed, on_progress=None, on_cancelled=None
    ) -> JobThread:
        thread = JobThread(title, job, self)
        thread.succeeded.connect(on_done)
        thread.failed.connect(on_failed)
        if on_progress is not None:
            thread.progressed.connect(on_progress)
        if on_cancelled is not None:
            thread.cancelled.connect(on_cancelled)
        thread.progressed.connect(lambda _p: self.changed.emit())
        thread.finished.connect(lambda t=thread: self._done(t))
        self.jobs.append(thread)
        thread.start()
        self.changed.emit()
        return thread

    def _done(self, thread: JobThread):
        if thread in self.jobs:
            self.jobs.remove(thread)
        thread.wait()  # its run() has returned; the object lives on while someone holds it
        thread.setParent(None)
        self.changed.emit()

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def cancel_all(self, wait: float = 5.0):
        for thread in list(self.jobs):
            thread.cancel()
        deadline = time.monotonic() + wait
        for thread in list(self.jobs):
            thread.wait(max(0, int((deadline - time.monotonic()) * 1000)))


class MeshPipeline(QObject):
    """codes -> face mesh, off the GUI thread. While a slider moves, `request(codes, live=True)`
    morphs the current mesh (fixed topology, repaired, never torn); where the morph cannot follow,
    a quick preview extraction replaces it and becomes the new morph base. `request(codes,
    live=False)` re-extracts coarse then fine. Only the newest request is served; a new request
    stops a running extraction."""

    morphed = pyqtSignal(object, object, object, object)  # vertices, normals, FaceCodes, MorphFrame
    meshReady = pyqtSignal(object, object, object, str)  # Mesh, normals, FaceCodes, stage
    progressed = pyqtSignal(object)  # Progress of the running extraction (None when done)
    failed = pyqtSignal(str)

    def __init__(self, session: Session, parent: QObject | None = None):
        super().__init__(parent)
        self.session = session
        self.quality = DEFAULT_QUALITY
        self._box = LatestValue()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._morpher: Morpher | None = None
        self._base_offsets: np.ndarray | None = None  # the detail's offsets at the morph base's vertices
        self.detail: DetailMap | None = None  # a fitted person's detail, put on every face
        self._cache = BandCache()
        self.served = 0
        self.idle = threading.Event()
        self.idle.set()
        self._thread = threading.Thread(target=self._loop, name="mesh-pipeline", daemon=True)
        self._thread.start()

    def set_session(self, session: Session):
        self._cancel.set()
        self.session = session
        self._morpher = None
        self._cache = BandCache()

    def set_detail(self, detail: DetailMap | None):
        """Every face from now on carries this fitted detail (None: the model's surface only)."""
        self.detail = detail
        self._morpher = None  # the next live step starts from a detailed base

    def set_quality(self, name: str):
        self.quality = name
        self._cache = BandCache()

    def request(self, codes: FaceCodes, live: bool):
        self.idle.clear()
        self._box.put((codes.copy(), live, self.session))

    def cancel(self):
        """Stop the running extraction (the face shown stays)."""
        self._cancel.set()

    @property
    def pending(self) -> bool:
        return self._box.pending() or not self.idle.is_set()

    def stop(self):
        self._stop.set()
        self._cancel.set()
        self._box.put(None)
        self._thread.join(5)

    def _loop(self):
        lower_thread_priority(MESH_NICE)
        while not self._stop.is_set():
            item = self._box.wait(0.5)
            if item is None:
                if not self._box.pending():
                    self.idle.set()
                continue
            codes, live, session = item
            self._cancel.clear()
            try:
                if live:
                    self._live(session, codes)
                else:
                    self._refine(session, codes)
                self.served += 1
            except UserError as exc:
                self.failed.emit(str(exc))
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                self.failed.emit(f"mesh update failed: {describe(exc)}")
            finally:
                if not self._box.pending():
                    self.idle.set()

    def _live(self, session: Session, codes: FaceCodes):
        morpher = self._morpher if self._morpher is not None and self._morpher.session is session else None
        if morpher is not None:
            frame = morpher.morph(codes)
            vertices, normals = frame.vertices, None
            if frame.sound:
                if self._base_offsets is not None:
                    vertices = along_normals(vertices, morpher.faces, self._base_offsets)
                normals = vertex_normals(vertices, morpher.faces)
            self.morphed.emit(vertices, normals, codes, frame)
            if frame.sound or self._box.pending():
                return
        mesh = session.extract(codes, PREVIEW_RESOLUTION)
        self._show(session, mesh, codes, "preview", morph_base=True)

    def _show(self, session: Session, mesh: Mesh, codes: FaceCodes, stage: str, morph_base: bool):
        """Emit a face with the fitted detail on it; a morph base keeps the model's surface for the
        next drag and the detail as fixed offsets (a morph keeps every vertex's template
        coordinates, so each vertex keeps its offset)."""
        offsets = None if self.detail is None else session.detail_offsets(codes, mesh.vertices, self.detail)
        shown = (
            mesh if offsets is None else Mesh(along_normals(mesh.vertices, mesh.faces, offsets), mesh.faces)
        )
        self.meshReady.emit(shown, vertex_normals(shown.vertices, shown.faces), codes, stage)
        if morph_base:
            self._morpher, self._base_offsets = session.morpher(mesh, codes), offsets

    def _interrupted(self) -> bool:
        return self._cancel.is_set() or self._stop.is_set() or self._box.pending()

    def _refine(self, session: Session, codes: FaceCodes):
        job = session.mesh_job(codes, self.quality, self._cache, interrupt=self._interrupted)

        def show(record: Progress):
            self.progressed.emit(record)
            if record.preview is None:
                return
            stage, mesh = record.preview
            self._show(session, mesh, codes, stage, morph_base=stage == "fine")

        try:
            drive(job, show, self._interrupted)
        except Cancelled:
            return
        finally:
            self.progressed.emit(None)


def wait_for(condition, timeout: float, step_ms: int = 10) -> bool:
    """Run the event loop until `condition()` holds or `timeout` s pass (scripts and benchmarks).

    A real QEventLoop, as under QApplication.exec(): QTest.qWait sleeps up to 10 ms between
    its passes over the events, which a latency benchmark would count as GUI stalls."""
    from PyQt6.QtCore import QEventLoop, QTimer

    if condition():
        return True
    loop = QEventLoop()
    poll = QTimer()
    poll.timeout.connect(lambda: loop.quit() if condition() else None)
    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    poll.start(step_ms)
    deadline.start(max(0, int(timeout * 1000)))
    loop.exec()
    poll.stop()
    deadline.stop()
    return bool(condition())


__all__: list[Any] = ["JobRunner", "JobThread", "MeshPipeline", "describe", "wait_for"]
