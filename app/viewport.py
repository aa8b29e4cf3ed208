"""The 3D view: one PyVista actor per mesh (face, scan, second face, markers), updated in place.

Render only from the GUI thread. With `use_3d=False` (logic tests under QT_QPA_PLATFORM=offscreen,
where QOpenGLWidget cannot render) the same API keeps the meshes but draws nothing.
"""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import QObject, QTimer, pyqtSignal
from PyQt6.QtWidgets import QLabel, QVBoxLayout, QWidget

from imface.extract import Mesh
from imface.extract.repair import vertex_normals

FACE_COLOR = (0.85, 0.72, 0.62)
SCAN_COLOR = (0.55, 0.7, 0.9)


def to_polydata(mesh: Mesh, normals: np.ndarray | None = None):
    import pyvista as pv

    if mesh.faces.size:
        cells = np.hstack([np.full((len(mesh.faces), 1), 3, np.int64), mesh.faces]).ravel()
        poly = pv.PolyData(mesh.vertices.astype(np.float32), cells)
        poly.point_data["Normals"] = vertex_normals(mesh.vertices, mesh.faces) if normals is None else normals
        poly.point_data.active_normals_name = "Normals"
    else:
        poly = pv.PolyData(mesh.vertices.astype(np.float32))
    return poly


class Viewport(QObject):
    picked = pyqtSignal(str, int, object)  # which mesh ("face"/"other"/"scan"), vertex index, point

    def __init__(self, parent: QWidget | None = None, use_3d: bool = True):
        super().__init__(parent)
        self.widget = QWidget(parent)
        layout = QVBoxLayout(self.widget)
        layout.setContentsMargins(0, 0, 0, 0)
        self.plotter = None
        if use_3d:
            from pyvistaqt import QtInteractor

            self.plotter = QtInteractor(self.widget, auto_update=False)
            self.plotter.set_background("#2b2d31", top="#50545c")
            layout.addWidget(self.plotter.interactor)
        else:
            label = QLabel("3D view disabled", self.widget)
            layout.addWidget(label)
        self.meshes: dict[str, object] = {}  # name -> PolyData (or Mesh without 3D)
        self.data: dict[str, Mesh] = {}
        self.colors: dict[str, np.ndarray | None] = {}  # per-vertex RGB a mesh is shown with
        self.actors: dict[str, object] = {}
        self.offsets: dict[str, np.ndarray] = {}
        self.hidden: dict[str, np.ndarray | None] = {}  # faces of a live morph not drawn
        self._had_hidden: dict[str, bool] = {}  # the actor's cells still hide some faces
        self.renders = 0
        # frames are drawn from a timer, not at once or from a posted call: the frame then runs in
        # an event-loop pass of its own, after the input and the work that asked for it (a pass
        # holding a fit's new actors, or a scan's camera reset, and the frame stalled ~55 ms)
        self._frame = QTimer(self, singleShot=True, interval=1)
        self._frame.timeout.connect(self._draw)
        self._camera_set = False
        self._warmed = False  # the shader programs of later views are compiled
        self._warm_actors: list = []
        self._warm_observer = None
        self._renderer_checked = False
        self._pick_mode = None
        self.visible: dict[str, bool] = {}

    # -- meshes -------------------------------------------------------------------------------------
    def set_mesh(
        self,
        name: str,
        mesh: Mesh | None,
        colors: np.ndarray | None = None,
        scalars: np.ndarray | None = None,
        scalar_title: str = "",
        clim: tuple[float, float] | None = None,
        offset: np.ndarray | None = None,
        opacity: float = 1.0,
        color=FACE_COLOR,
    ):
        """Show (or replace, or remove with None) a named mesh; new topology re-adds the actor."""
        if mesh is None:
            self.remove(name)
            return
        self.data[name] = mesh
        self.hidden[name] = None
        self._had_hidden.pop(name, None)
        self.colors[name] = None if colors is None else np.asarray(colors, np.uint8)
        self.offsets[name] = np.zeros(3, np.float32) if offset is None else np.asarray(offset, np.float32)
        if self.plotter is None:
            self.meshes[name] = mesh
            return
        poly = to_polydata(Mesh(mesh.vertices + self.offsets[name], mesh.faces))
        # render=False: add_mesh would otherwise render at once (up to a second for a large scan on
        # software GL); callers schedule one render for all their changes
        kwargs = dict(name=name, opacity=opacity, pickable=True, show_scalar_bar=False, render=False)
        if colors is not None:
            poly.point_data["RGB"] = np.asarray(colors, np.uint8)
            kwargs.update(scalars="RGB", rgb=True)
        elif scalars is not None:
            poly.point_data["distance"] = np.asarray(scalars, np.float32)
            kwargs.update(
                scalars="distance",
                cmap="turbo",
                clim=clim,
                show_scalar_bar=True,
                scalar_bar_args=dict(
                    title=scalar_title,
                    vertical=True,
                    fmt="%.1f",
                    position_x=0.84,
                    position_y=0.1,
                    width=0.1,
                    height=0.75,
                    title_font_size=12,
                    label_font_size=11,
                    # the caller schedules one render; a synchronous one here stalled the GUI ~0.3 s
                    render=False,
                ),
            )
        else:
            kwargs.update(color=color)
        if mesh.faces.size == 0:
            kwargs.update(render_points_as_spheres=True, point_size=3, style="points")
        else:
            kwargs.update(smooth_shading=False, interpolation="gouraud", specular=0.2)
        if scalars is None and name in self.actors:
            try:
                self.plotter.remove_scalar_bar(title=scalar_title or "distance (mm)", render=False)
            except (KeyError, AttributeError, ValueError, StopIteration):
                pass
        self.actors[name] = self.plotter.add_mesh(poly, **kwargs)
        self.actors[name].SetVisibility(self.visible.get(name, True))
        self.meshes[name] = poly
        if not self._camera_set:
            self.reset_camera()

    def update_points(
        self,
        name: str,
        vertices: np.ndarray,
        normals: np.ndarray | None = None,
        hidden: np.ndarray | None = None,
    ) -> bool:
        """Same topology: move the points of the existing actor (no new actor). Pass normals
        computed off the GUI thread when you have them; `hidden` (F,) bool faces are not drawn."""
        mesh = self.data.get(name)
        if mesh is None or mesh.vertices.shape != vertices.shape:
            return False
        self.data[name] = Mesh(vertices, mesh.faces)
        self.hidden[name] = hidden if hidden is not None and hidden.any() else None
        if self.plotter is None:
            return True
        poly = self.meshes[name]
        poly.points = vertices + self.offsets[name]
        if mesh.faces.size:
            poly.point_data["Normals"] = vertex_normals(vertices, mesh.faces) if normals is None else normals
            if self.hidden[name] is not None or self._had_hidden.pop(name, False):
                _hide_cells(poly, mesh.faces, self.hidden[name])
                self._had_hidden[name] = self.hidden[name] is not None
        return True

    def replace_geometry(self, name: str, mesh: Mesh, normals: np.ndarray | None = None) -> bool:
        """New topology for a plainly coloured mesh: swap the geometry inside the existing actor
        (several times cheaper than a new actor). False when there is no such actor."""
        poly = self.meshes.get(name)
        if name not in self.actors or poly is None or self.plotter is None or len(poly.point_data.keys()) > 1:
            return False
        self.data[name] = mesh
        self.hidden[name] = None
        self._had_hidden.pop(name, None)
        poly.copy_from(to_polydata(Mesh(mesh.vertices + self.offsets[name], mesh.faces), normals))
        return True

    def update_colors(self, name: str, colors: np.ndarray) -> bool:
        poly = self.meshes.get(name)
        if self.plotter is None or poly is None or "RGB" not in poly.point_data:
            return False
        poly.point_data["RGB"] = np.asarray(colors, np.uint8)
        return True

    def set_visible(self, name: str, visible: bool):
        actor = self.actors.get(name)
        if actor is not None:
            actor.SetVisibility(bool(visible))
        self.visible[name] = bool(visible)

    def is_visible(self, name: str) -> bool:
        return name in self.data and self.visible.get(name, True)

    def remove(self, name: str):
        self.data.pop(name, None)
        self.colors.pop(name, None)
        self.hidden.pop(name, None)
        self.meshes.pop(name, None)
        actor = self.actors.pop(name, None)
        if actor is not None and self.plotter is not None:
            self.plotter.remove_actor(actor, render=False)

    def set_markers(self, name: str, points: np.ndarray | None, color="yellow", size: float = 14):
        if points is None or len(points) == 0:
            self.remove(name)
            return
        pts = np.asarray(points, np.float32).reshape(-1, 3)
        self.data[name] = Mesh(pts, np.zeros((0, 3), np.int64))
        if self.plotter is None:
            return
        import pyvista as pv

        self.actors[name] = self.plotter.add_mesh(
            pv.PolyData(pts),
            name=name,
            color=color,
            point_size=size,
            render_points_as_spheres=True,
            pickable=False,
            render=False,
        )

    # -- view ----------------------------------------------------------------------------------------
    def reset_camera(self):
        if self.plotter is None:
            return
        # pyvista renders synchronously on each of these by default (two frames on the GUI thread);
        # one scheduled frame shows the new view
        self.plotter.view_xy(render=False)
        # bounds from the arrays we hold: VTK's own bounds of a fresh 15 k-vertex actor kept the
        # GUI thread waiting ~14 ms (17 ms wall for 3.5 ms of its CPU)
        bounds = self._shown_bounds()
        renderer = self.plotter.renderer
        if bounds is None:
            renderer.ResetCamera()
            renderer.ResetCameraClippingRange()
        else:
            renderer.ResetCamera(*bounds)
            renderer.ResetCameraClippingRange(*bounds)
        self.plotter.camera.zoom(1.0 if "other" in self.data else 1.2)
        self._camera_set = True
        self._warm_up_shaders()
        self.render()

    def _shown_bounds(self) -> tuple[float, ...] | None:
        """(xmin, xmax, ymin, ymax, zmin, zmax) of the visible meshes, as drawn (with offsets)."""
        shown = [
            mesh.vertices + self.offsets.get(name, 0.0)  # markers are placed as given
            for name, mesh in self.data.items()
            if self.is_visible(name)
        ]
        points = np.concatenate([np.zeros((0, 3)), *shown])
        if len(points) == 0:
            return None
        low, high = points.min(0), points.max(0)
        return (low[0], high[0], low[1], high[1], low[2], high[2])

    def _warm_up_shaders(self):
        """Compile, in the first frame, the shader programs of views shown later: a colour-mapped
        mesh (the fit's distance heat map) and a translucent one (the fitted face over the scan).
        Compiling one on software OpenGL took ~90 ms of the GUI thread in the frame that first
        showed it, mid-fit; here it adds ~15 ms to the first frame. The stand-ins are zero-area
        triangles (nothing is drawn) removed once that frame is on screen."""
        import pyvista as pv

        if self.plotter is None or self._warmed:
            return
        self._warmed = True
        centre = np.asarray(self.plotter.renderer.ComputeVisiblePropBounds()).reshape(3, 2).mean(1)
        points = (centre + np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]])).astype(np.float32)
        stand_in = pv.PolyData(points, np.array([3, 0, 1, 2]))
        stand_in.point_data["Normals"] = np.tile(np.float32([0, 0, 1]), (3, 1))
        stand_in.point_data["distance"] = np.float32([0, 0.5, 1])
        shading = dict(
            smooth_shading=False, interpolation="gouraud", specular=0.2, pickable=False, render=False
        )
        add = self.plotter.add_mesh
        self._warm_actors = [
            add(stand_in.copy(), scalars="distance", cmap="turbo", show_scalar_bar=False, **shading),
            add(stand_in.copy(), color=FACE_COLOR, opacity=0.5, **shading),
        ]
        window = self.plotter.ren_win
        self._warm_observer = window.AddObserver("EndEvent", self._warm_up_done)

    def _warm_up_done(self, *_):
        window = self.plotter.ren_win if self.plotter is not None else None
        if window is not None:
            window.RemoveObserver(self._warm_observer)
            for actor in self._warm_actors:
                self.plotter.remove_actor(actor, render=False)
        self._warm_actors = []

    def render(self):
        """Ask for a frame (many asks before it is drawn make one frame)."""
        self.renders += 1
        if self.plotter is not None and not self._frame.isActive():
            self._frame.start()

    def _draw(self):
        if self.plotter is not None:
            self._check_renderer()
            # paintGL renders the scene whenever Qt paints the widget; rendering here as well
            # would draw every frame twice (~17 ms more on software GL), so just schedule it
            self.plotter.update()

    def _check_renderer(self):
        """On a software OpenGL (Mesa llvmpipe/softpipe, SwiftShader: no GPU, e.g. under Xvfb)
        4x multisampling makes every frame ~3x slower (40 vs 14 ms for a 15 k-vertex face in a
        550x720 view on 2 cores), which a slider drag feels; drop it there, keep it on a GPU.
        The same goes for order-independent transparency: its extra full-window passes made a
        frame of the translucent fitted face over a 15 k-vertex scan 56 instead of 40 ms (1100x900
        view), the largest GUI stall of a fit; one translucent surface blends well enough without."""
        if self._renderer_checked:
            return
        self._renderer_checked = True
        window = self.plotter.ren_win
        try:
            capabilities = window.ReportCapabilities() or ""
        except Exception:  # noqa: BLE001 - no context yet: keep the defaults
            self._renderer_checked = False
            return
        if software_opengl(capabilities):
            window.SetMultiSamples(0)
            for renderer in self.plotter.renderers:
                renderer.SetUseOIT(False)

    def screenshot(self, path: str | None = None, scale: int = 1):
        if self.plotter is None:
            raise RuntimeError("the 3D view is disabled")
        self.plotter.render()
        return self.plotter.screenshot(path, scale=scale, return_img=True)

    # -- picking -------------------------------------------------------------------------------------
    def enable_picking(self, on: bool = True):
        if self.plotter is None:
            return
        if on and self._pick_mode is None:
            self.plotter.enable_point_picking(
                callback=self._on_pick,
                show_message=False,
                use_picker=True,
                left_clicking=False,
                show_point=False,
            )
            self._pick_mode = "point"
        elif not on and self._pick_mode is not None:
            self.plotter.disable_picking()
            self._pick_mode = None

    def _on_pick(self, point, picker=None):
        if point is None:
            return
        self.pick_at(np.asarray(point, np.float32))

    def pick_at(self, point: np.ndarray):
        """Snap a world point to the nearest vertex of the nearest shown mesh and emit `picked`."""
        best = None
        for name in ("face", "other", "scan"):
            mesh = self.data.get(name)
            if mesh is None:
                continue
            if not self.visible.get(name, True):
                continue
            d = np.linalg.norm(mesh.vertices + self.offsets[name] - point[None], axis=1)
            i = int(np.argmin(d))
            if best is None or d[i] < best[0]:
                best = (float(d[i]), name, i)
        if best is not None:
            _, name, i = best
            self.picked.emit(name, i, self.data[name].vertices[i])

    def close(self):
        self._frame.stop()
        if self.plotter is not None:
            self.plotter.close()
            self.plotter = None


def software_opengl(capabilities: str) -> bool:
    """Whether VTK's capability report names a CPU rasteriser."""
    renderer = next((line for line in capabilities.splitlines() if "renderer string" in line.lower()), "")
    return any(name in renderer.lower() for name in ("llvmpipe", "softpipe", "swiftshader", "software"))


def _hide_cells(poly, faces: np.ndarray, hidden: np.ndarray | None):
    """Draw the mesh without the `hidden` faces, keeping the cell count: a hidden face becomes a
    degenerate triangle on its first corner, which rasterises to nothing."""
    shown = faces if hidden is None else np.where(hidden[:, None], faces[:, :1], faces)
    poly.faces = np.hstack([np.full((len(shown), 1), 3, np.int64), shown]).ravel()
