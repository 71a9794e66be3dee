"""The 3D scene and the control panel shared by `recon view` and the live training viewer.

Scene nodes: /gaussians (splats), /cameras/<i> (input frustums with their photos), /hull (voxel
centres). Panel: opacity threshold, SH degree, camera/hull toggles, jump to an input camera,
.ply / .splat downloads.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

import numpy as np
import viser
import viser.transforms as vtf

from recon.data.cameras import Cameras
from recon.gaussians import Gaussians
from recon.viewer.content import CameraViews, thumbnail
from recon.viewer.splats import SplatArrays, splat_arrays, splat_colors, voxel_spacing

TRAIN_COLOR = (40, 110, 230)
TEST_COLOR = (240, 140, 20)


def _rotmat_to_wxyz(rot: np.ndarray) -> np.ndarray:
    return vtf.SO3.from_matrix(np.asarray(rot, dtype=np.float64)).wxyz


class SceneView:
    """Owns the viser scene nodes and GUI controls for one set of Gaussians (replaceable any time).

    Thread-safe: the trainer's streaming thread, GUI callbacks and camera callbacks all call in.
    """

    def __init__(self, server: viser.ViserServer, title: str = "recon"):
        self.server = server
        self._lock = threading.RLock()
        self._gaussians: Gaussians | None = None
        self._arrays: SplatArrays | None = None
        self._splats = None  # GaussianSplatHandle
        self._node_center = np.zeros(3, dtype=np.float32)
        self._node_scale = 1.0
        self._framed = False
        self._ply_bytes: Callable[[], bytes] | None = None
        self._download_stem = "gaussians"
        self._views: CameraViews | None = None
        self._frustums: list = []
        self._hull = None
        self._eye: np.ndarray | None = None  # last reported viewer eye, for view-dependent colour
        self._look_at: np.ndarray | None = None  # what "go to camera" keeps the orbit centred on
        self._recolour_wanted = threading.Event()
        self._closed = False
        self.shown_count = 0
        self.pushes = 0  # splat buffers sent (tests and stats)
        self._build_panel(title)
        server.on_client_connect(self._on_connect)
        self._recolour_thread = threading.Thread(target=self._recolour_loop, name="viewer-recolour", daemon=True)
        self._recolour_thread.start()

    # ---------------------------------------------------------------- panel

    def _build_panel(self, title: str) -> None:
        gui = self.server.gui
        gui.configure_theme(control_width="medium", show_share_button=False)
        gui.set_panel_label(title)
        with gui.add_folder("Gaussians"):
            self.count_md = gui.add_markdown("no Gaussians yet")
            self.opacity_slider = gui.add_slider(
                "Min opacity", min=0.0, max=1.0, step=0.01, initial_value=0.0,
                hint="Hide Gaussians more transparent than this.")
            self.sh_slider = gui.add_slider(
                "SH degree", min=0, max=3, step=1, initial_value=0,
                hint="0: base (DC) colour, the average over all directions. 1-3: view-dependent colour "
                     "evaluated for the direction from your camera (refreshed as you move).")
        with gui.add_folder("Scene"):
            self.show_cameras = gui.add_checkbox("Input cameras", True)
            self.show_hull = gui.add_checkbox("Voxel hull", False, hint="Carved voxel centres (init stage).")
            self.camera_dropdown = gui.add_dropdown("Camera", ["(none)"], disabled=True)
            self.goto_button = gui.add_button("Go to camera", disabled=True, icon=viser.Icon.CAMERA)
        with gui.add_folder("Download"):
            self.ply_button = gui.add_button("Download .ply", icon=viser.Icon.DOWNLOAD, disabled=True)
            self.splat_button = gui.add_button("Download .splat", icon=viser.Icon.DOWNLOAD, disabled=True)

        self.opacity_slider.on_update(lambda _: self.refresh())
        self.sh_slider.on_update(lambda _: self.refresh())
        self.show_cameras.on_update(lambda _: self._set_visibility())
        self.show_hull.on_update(lambda _: self._set_visibility())
        self.goto_button.on_click(self._on_goto)
        self.ply_button.on_click(lambda e: self._send(e.client, f"{self._download_stem}.ply", self.ply_bytes()))
        self.splat_button.on_click(lambda e: self._send(e.client, f"{self._download_stem}.splat", self.splat_bytes()))

    @staticmethod
    def _send(client, filename: str, data: bytes | None) -> None:
        if client is not None and data:
            client.send_file_download(filename, data, save_immediately=True)

    # ---------------------------------------------------------------- gaussians

    def set_gaussians(self, g: Gaussians, ply_bytes: Callable[[], bytes] | None = None,
                      download_stem: str | None = None) -> None:
        """Show `g` (replacing what is shown). `ply_bytes` supplies the .ply download (default: `g`
        written in the standard 3DGS layout)."""
        arrays = splat_arrays(g)
        with self._lock:
            if self._closed:
                return
            self._gaussians, self._arrays = g, arrays
            self._ply_bytes = ply_bytes
            if download_stem:
                self._download_stem = download_stem
            if not self._framed and len(arrays):
                self._frame(g)
            top = max(arrays.sh_degree, 1)  # a 0..0 slider would not render; degree 0 disables it
            if self.sh_slider.max != top:
                self.sh_slider.max = top
            if self.sh_slider.value > arrays.sh_degree:
                self.sh_slider.value = arrays.sh_degree
            self.sh_slider.disabled = arrays.sh_degree == 0
            self.ply_button.disabled = False
            self.splat_button.disabled = False
            self._push()

    def refresh(self) -> None:
        with self._lock:
            if self._arrays is not None and not self._closed:
                self._push()

    def _push(self) -> None:
        a = self._arrays
        keep = np.flatnonzero(a.opacities >= float(self.opacity_slider.value))
        shown = a.subset(keep)
        degree = int(self.sh_slider.value)
        eye = None
        if degree > 0 and self._eye is not None:
            # The eye in the node's local frame, where the centres live.
            eye = (self._eye - self._node_center) / self._node_scale
        k = 1.0 / self._node_scale
        centers = (shown.centers - self._node_center) * k
        local = SplatArrays(centers, shown.covariances * (k * k), shown.opacities, shown.sh)
        rgbs = splat_colors(local, degree, eye)
        opac = shown.opacities[:, None]
        if len(keep) == 0:
            if self._splats is not None:
                self._splats.visible = False
        elif self._splats is None:
            self._splats = self.server.scene.add_gaussian_splats(
                "/gaussians", centers=centers, covariances=local.covariances, rgbs=rgbs, opacities=opac,
                scale=self._node_scale, position=tuple(float(v) for v in self._node_center))
        else:
            self._splats.set_gaussians(centers, local.covariances, rgbs, opac)
            self._splats.visible = True
        self.shown_count = int(len(keep))
        self.pushes += 1
        self.count_md.content = f"**{len(keep):,}** of {len(a):,} Gaussians shown"

    def _frame(self, g: Gaussians) -> None:
        """Up direction, look-at point and start pose from the object (and the input cameras)."""
        from recon.export.views import frame_object

        cams = self._views.cameras if self._views is not None else None
        f = frame_object(g, cams)
        center = f.center.numpy().astype(np.float32)
        # Keep splat coordinates near unit size on the wire: viser packs covariances as float16,
        # which would flush the tiny variances of a small object in a large world frame to zero.
        self._node_center, self._node_scale = center, float(max(f.radius, 1e-6))
        up = f.up.numpy()
        self.server.scene.set_up_direction(tuple(float(v) for v in up))
        if cams is not None:
            d = cams.centers[0].double().numpy() - f.center.numpy()
        else:
            d = np.array([1.0, 1.0, 0.0]) + up  # an oblique default
        d = d - (d @ up) * up
        if np.linalg.norm(d) < 1e-9:
            d = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
        d = d / np.linalg.norm(d)
        # Turn 20 degrees off the first camera so its frustum does not fill the start view.
        side = np.cross(up, d)
        d = math.cos(math.radians(20)) * d + math.sin(math.radians(20)) * side
        eye_dir = math.cos(f.elevation) * d + math.sin(f.elevation) * up
        # Further back than the export framing: room for the panel and the camera ring.
        eye = f.center.numpy() + 1.6 * f.distance * eye_dir
        ic = self.server.initial_camera
        ic.up = tuple(float(v) for v in up)
        ic.fov = float(f.fov_y)
        ic.position = tuple(float(v) for v in eye)
        ic.look_at = tuple(float(v) for v in f.center.numpy())
        ic.near = float(f.radius * 0.01)
        ic.far = float((f.distance + f.radius) * 50)
        self._look_at = f.center.numpy()
        self._framed = True

    def ply_bytes(self) -> bytes | None:
        with self._lock:
            if self._ply_bytes is not None:
                return self._ply_bytes()
            g = self._gaussians
        if g is None:
            return None
        from recon.export.ply import ply_bytes

        return ply_bytes(g)

    def splat_bytes(self) -> bytes | None:
        with self._lock:
            g = self._gaussians
        if g is None:
            return None
        from recon.export.splat import splat_bytes

        return splat_bytes(g)

    # ---------------------------------------------------------------- view-dependent colour

    def _on_connect(self, client) -> None:
        @client.camera.on_update
        def _(cam) -> None:
            self._eye = np.asarray(cam.position, dtype=np.float32)
            if int(self.sh_slider.value) > 0:
                self._recolour_wanted.set()

    def _recolour_loop(self) -> None:
        # Coalesces a burst of camera moves into at most a few recolours a second.
        while not self._closed:
            if not self._recolour_wanted.wait(timeout=0.5):
                continue
            self._recolour_wanted.clear()
            self.refresh()
            time.sleep(0.15)

    # ---------------------------------------------------------------- cameras and hull

    def set_cameras(self, views: CameraViews) -> None:
        with self._lock:
            for h in self._frustums:
                h.remove()
            self._frustums = []
            self._views = views
            cams = views.cameras
            size = 0.05 * _camera_spread(cams)
            c2w = cams.camtoworlds.double().numpy()
            fy = cams.Ks[:, 1, 1].double().numpy()
            for i, name in enumerate(views.names):
                fov = 2.0 * math.atan(cams.height / (2.0 * fy[i]))
                img = views.images[i] if i < len(views.images) else None
                split = views.splits[i] if i < len(views.splits) else "train"
                h = self.server.scene.add_camera_frustum(
                    f"/cameras/{i:03d}", fov=fov, aspect=cams.width / cams.height, scale=size,
                    color=TEST_COLOR if split == "test" else TRAIN_COLOR, image=img,
                    wxyz=_rotmat_to_wxyz(c2w[i, :3, :3]), position=c2w[i, :3, 3],
                    visible=bool(self.show_cameras.value))
                h.on_click(lambda e, i=i: self.goto_camera(e.client, i))
                self._frustums.append(h)
            labels = [f"{i}: {n} ({s})" for i, (n, s) in enumerate(zip(views.names, views.splits))]
            self.camera_dropdown.options = labels
            self.camera_dropdown.value = labels[0]
            self.camera_dropdown.disabled = False
            self.goto_button.disabled = False

    def set_hull(self, points: np.ndarray, colors: np.ndarray | None = None) -> None:
        points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if colors is None:
            colors = np.full((len(points), 3), 160, dtype=np.uint8)
        colors = np.asarray(colors)
        if colors.dtype != np.uint8:
            colors = (np.clip(colors, 0, 1) * 255 + 0.5).astype(np.uint8)
        with self._lock:
            if self._hull is not None:
                self._hull.remove()
            self._hull = self.server.scene.add_point_cloud(
                "/hull", points=points, colors=colors, point_size=float(voxel_spacing(points)),
                point_shape="square", precision="float32", visible=bool(self.show_hull.value))

    def _set_visibility(self) -> None:
        with self._lock:
            for h in self._frustums:
                h.visible = bool(self.show_cameras.value)
            if self._hull is not None:
                self._hull.visible = bool(self.show_hull.value)

    def _on_goto(self, event) -> None:
        label = str(self.camera_dropdown.value)
        if ":" in label:
            self.goto_camera(event.client, int(label.split(":", 1)[0]))

    def goto_camera(self, client, index: int) -> None:
        """Put `client`'s view at input camera `index` (its pose and vertical field of view)."""
        with self._lock:
            if client is None or self._views is None or not 0 <= index < len(self._views.names):
                return
            cams = self._views.cameras
            c2w = cams.camtoworlds[index].double().numpy()
            fov = 2.0 * math.atan(cams.height / (2.0 * float(cams.Ks[index, 1, 1])))
            target = self._look_at
            dist = float(np.linalg.norm(c2w[:3, 3] - target)) if target is not None else 1.0
        with client.atomic():
            client.camera.fov = fov
            client.camera.position = c2w[:3, 3]
            client.camera.look_at = c2w[:3, 3] + c2w[:3, 2] * max(dist, 1e-6)
            client.camera.up_direction = -c2w[:3, 1]

    def close(self) -> None:
        self._closed = True
        self._recolour_wanted.set()


def _camera_spread(cams: Cameras) -> float:
    c = cams.centers.double()
    return float((c - c.mean(dim=0)).norm(dim=1).mean()) if len(cams) > 1 else 1.0


def cameras_from_scene(scene, train_idx: list[int] | None = None) -> CameraViews:
    """CameraViews of a loaded Scene (its normalised frame, as the trainer's Gaussians)."""
    train = set(range(scene.n_frames)) if train_idx is None else set(train_idx)
    images = []
    for i in range(scene.n_frames):
        rgb = scene.images[i].numpy()
        if scene.masks is not None:
            a = scene.masks[i].numpy()[..., None].astype(np.float32) / 255.0
            rgb = (rgb * a + 255.0 * (1 - a)).astype(np.uint8)
        images.append(thumbnail(rgb))
    splits = ["train" if i in train else "test" for i in range(scene.n_frames)]
    return CameraViews(scene.cameras, list(scene.names), splits, images)

