"""Synthetic scenes with exact ground truth: layered textured planes under homographies.

A scene is a stack of layers, back to front: a textured background and several textured objects
(ellipse, polygon, rectangle). Each layer is a texture with a shape mask in its own "texture
coordinates" and, per frame t, a pose P_t (3 x 3 homography, texture -> image coordinates); objects
move by affine or projective poses. Because a pixel x of frame t that shows layer L is the texture
point c = P_t^-1 x, its position in frame s is exactly P_s c: the flow is P_s P_t^-1 x - x. The
pixel is occluded in frame s when P_s c leaves the frame or lands inside a nearer layer's shape.
Frames, instance maps and occlusion tests all use the same nearest-texel shape test, so the ground
truth agrees with the pictures to the pixel.

Deterministic by seed: sequence i of a set with seed S uses numpy's generator seeded with (S, i).

Writing scenes to disk as a data set: pipeline.synthetic.dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import cv2
import numpy as np
from unsamflow.pipeline.errors import BadInputError

SHAPES = ("ellipse", "polygon", "rectangle")
TEXTURES = ("noise", "stripes", "checker", "dots")


@dataclass(frozen=True)
class SceneConfig:
    """What a scene may contain and how fast it may move (motions are per frame)."""

    height: int = 256
    width: int = 320
    frames: int = 2
    min_objects: int = 3
    max_objects: int = 5
    object_size: tuple[float, float] = (0.15, 0.4)  # fraction of min(H, W)
    max_translation: float = 6.0  # px per frame, objects
    max_rotation: float = 3.0  # degrees per frame
    max_scale: float = 0.03  # relative zoom per frame
    max_perspective: float = 0.02  # change of the projective terms per frame (homography objects)
    background_translation: float = 3.0  # px per frame
    homography_fraction: float = 0.5  # share of objects moving by a homography (the rest affine)
    lighting: float = 0.0  # max relative brightness change per frame (0 = none)
    noise: float = 0.0  # Gaussian noise sigma in grey levels (0 = none)

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise BadInputError(f"scene size {self.height}x{self.width} is too small (min 16x16)")
        if self.frames < 2:
            raise BadInputError(f"a sequence needs at least 2 frames, got {self.frames}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise BadInputError(f"object counts must satisfy 0 <= min <= max, got {self.min_objects}, "
                                f"{self.max_objects}")  # fmt: skip


DIFFICULTIES: dict[str, SceneConfig] = {
    "easy": SceneConfig(min_objects=2, max_objects=3, max_translation=4.0, max_rotation=2.0,
                        max_scale=0.02, max_perspective=0.01, background_translation=2.0),
    "medium": SceneConfig(min_objects=3, max_objects=5, max_translation=8.0, max_rotation=4.0,
                          max_scale=0.04, max_perspective=0.02, background_translation=4.0,
                          lighting=0.03, noise=1.0),
    "hard": SceneConfig(min_objects=5, max_objects=8, max_translation=16.0, max_rotation=8.0,
                        max_scale=0.08, max_perspective=0.04, background_translation=8.0,
                        lighting=0.08, noise=3.0),
}  # fmt: skip


def config_for(difficulty: str, height: int, width: int, frames: int, **overrides) -> SceneConfig:
    if difficulty not in DIFFICULTIES:
        raise BadInputError(f"unknown difficulty {difficulty!r}; choose one of {sorted(DIFFICULTIES)}")
    return replace(DIFFICULTIES[difficulty], height=height, width=width, frames=frames, **overrides)


# -- textures and shapes ---------------------------------------------------------------------------
def make_texture(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> np.ndarray:
    """A smooth but well-textured H x W x 3 float32 image in [20, 235].

    Every kind is blurred a little: sharp texel edges would make bilinear resampling (the warp
    check, and any flow method) depend on sub-pixel position more than real images do.
    """
    kind = kind or TEXTURES[rng.integers(len(TEXTURES))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "noise":
        g = sum(cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), s) * s
                for s in (1.5, 4.0, 10.0))  # fmt: skip
    elif kind == "stripes":
        period, ang = rng.uniform(12, 32), rng.uniform(0, np.pi)
        g = np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period + rng.uniform(0, 6.3))
    elif kind == "checker":
        cell = rng.uniform(10, 28)
        g = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    elif kind == "dots":
        g = np.zeros((h, w), np.float32)
        for _ in range(max(4, h * w // 300)):
            c = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.circle(g, c, int(rng.integers(2, 7)), float(rng.uniform(-1, 1)), -1)
    else:
        raise BadInputError(f"unknown texture kind {kind!r}; choose one of {TEXTURES}")
    g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), 1.5)
    g = (g - g.mean()) / (g.std() + 1e-6)
    low = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), 12.0)
    low /= low.std() + 1e-6
    c1, c2 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    while np.linalg.norm(c1 - c2) < 90:  # enough contrast to see (and match) the texture
        c2 = rng.uniform(30, 225, 3)
    mix = (0.5 + 0.5 * np.tanh(0.45 * g + 0.2 * low))[..., None]  # smooth: no clipping kinks
    return np.clip(c1 * (1 - mix) + c2 * mix, 20, 235).astype(np.float32)


def make_shape(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """Bool shape mask filling an h x w texture (2 px margin)."""
    m = np.zeros((h, w), np.uint8)
    cx, cy, rx, ry = (w - 1) / 2, (h - 1) / 2, (w - 5) / 2, (h - 5) / 2
    if kind == "ellipse":
        cv2.ellipse(m, (round(cx), round(cy)), (round(rx), round(ry)), 0, 0, 360, 1, -1)
    elif kind == "rectangle":
        m[2 : h - 2, 2 : w - 2] = 1
    elif kind == "polygon":
        n = int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.55, 1.0, n)
        pts = np.stack([cx + rx * rad * np.cos(ang), cy + ry * rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    else:
        raise BadInputError(f"unknown shape {kind!r}; choose one of {SHAPES}")
    return m.astype(bool)


# -- poses --------------------------------------------------------------------------------------------
@dataclass
class Motion:
    """Pose parameters at frame 0 and their change per frame; pose(t) is a 3 x 3 homography."""

    center: np.ndarray  # texture point placed at `pos` (texture coordinates)
    half: float  # texture half-size, normalises the projective terms
    pos: np.ndarray
    vel: np.ndarray
    angle: float
    spin: float
    scale: float
    zoom: float  # log-scale change per frame
    aspect: float
    stretch: float  # log-aspect change per frame (affine, not just similarity)
    persp: np.ndarray = field(default_factory=lambda: np.zeros(2))
    dpersp: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def pose(self, t: float) -> np.ndarray:
        px, py = self.pos + self.vel * t
        th = self.angle + self.spin * t
        s = self.scale * math.exp(self.zoom * t)
        a = self.aspect + self.stretch * t
        p = (self.persp + self.dpersp * t) / self.half
        c, sn = math.cos(th), math.sin(th)
        trans = np.array([[1, 0, px], [0, 1, py], [0, 0, 1.0]])
        rot = np.array([[c, -sn, 0], [sn, c, 0], [0, 0, 1.0]])
        scl = np.diag([s * math.exp(a), s * math.exp(-a), 1.0])
        proj = np.array([[1, 0, 0], [0, 1, 0], [p[0], p[1], 1.0]])
        back = np.array([[1, 0, -self.center[0]], [0, 1, -self.center[1]], [0, 0, 1.0]])
        return trans @ rot @ scl @ proj @ back


@dataclass
class Layer:
    texture: np.ndarray  # h x w x 3 float32
    shape: np.ndarray | None  # h x w bool; None = infinite plane (background, texture mirrored)
    motion: Motion
    kind: str  # "background" or a shape name


# -- the scene -------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """Layers back to front (index = instance id, 0 = background) and the rendered sequence."""

    config: SceneConfig
    layers: list[Layer]
    frames: list[np.ndarray] = field(default_factory=list)  # H x W x 3 uint8 RGB
    instances: list[np.ndarray] = field(default_factory=list)  # H x W uint16

    @cached_property
    def grid(self) -> np.ndarray:
        """Homogeneous pixel coordinates, 3 x H x W (x, y, 1)."""
        h, w = self.config.height, self.config.width
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        return np.stack([xs, ys, np.ones((h, w))])

    def extent(self, i: int, t: float) -> tuple[int, int, int, int] | None:
        """Pixel box (x0, y0, x1, y1), inclusive and clipped to the frame, that holds layer i at frame t.

        None means "everywhere" (the background, or a pose too oblique to bound by its corners).
        Restricting work to this box is what makes a scene cost about its objects' area, not layers x frame.
        """
        layer = self.layers[i]
        if layer.shape is None:
            return None
        th, tw = layer.shape.shape
        corners = np.array([[-0.5, tw - 0.5, tw - 0.5, -0.5], [-0.5, -0.5, th - 0.5, th - 0.5], [1.0] * 4])
        q = layer.motion.pose(t) @ corners
        if (q[2] <= 0).any():
            return None
        x, y = q[0] / q[2], q[1] / q[2]
        h, w = self.config.height, self.config.width
        return (max(0, math.floor(x.min())), max(0, math.floor(y.min())),
                min(w - 1, math.ceil(x.max())), min(h - 1, math.ceil(y.max())))  # fmt: skip

    def texture_coords(self, i: int, t: float, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Texture point (u, v) of layer i under image points pts (3 x N) at frame t, and where w > 0."""
        c = np.linalg.inv(self.layers[i].motion.pose(t)) @ pts
        with np.errstate(divide="ignore", invalid="ignore"):
            return c[0] / c[2], c[1] / c[2], c[2] > 0

    def inside(self, i: int, u: np.ndarray, v: np.ndarray, front: np.ndarray) -> np.ndarray:
        """The shape test every frame, instance map and occlusion uses: the nearest texel's mask."""
        shape = self.layers[i].shape
        if shape is None:
            return np.ones(u.shape, bool)
        h, w = shape.shape
        ui, vi = np.rint(u), np.rint(v)
        ok = front & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
        out = np.zeros(u.shape, bool)
        out[ok] = shape[vi[ok].astype(np.int64), ui[ok].astype(np.int64)]
        return out

    def covers(self, i: int, t: float, pts: np.ndarray) -> np.ndarray:
        """Which image points (3 x N, normalised homogeneous) fall inside layer i's shape at frame t."""
        box = self.extent(i, t)
        if box is None:
            return self.inside(i, *self.texture_coords(i, t, pts))
        x0, y0, x1, y1 = box
        near = (pts[0] >= x0 - 1) & (pts[0] <= x1 + 1) & (pts[1] >= y0 - 1) & (pts[1] <= y1 + 1)
        out = np.zeros(pts.shape[1], bool)
        if near.any():
            out[near] = self.inside(i, *self.texture_coords(i, t, pts[:, near]))
        return out

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame t (float RGB before lighting/noise) and its instance map."""
        h, w = self.config.height, self.config.width
        img = np.zeros((h, w, 3), np.float32)
        inst = np.zeros((h, w), np.uint16)
        for i, layer in enumerate(self.layers):
            x0, y0, x1, y1 = self.extent(i, t) or (0, 0, w - 1, h - 1)
            if x1 < x0 or y1 < y0:
                continue  # entirely outside the frame
            block = self.grid[:, y0 : y1 + 1, x0 : x1 + 1]
            bh, bw = block.shape[1:]
            u, v, front = self.texture_coords(i, t, block.reshape(3, -1))
            inside = self.inside(i, u, v, front).reshape(bh, bw)
            mx = u.reshape(bh, bw).astype(np.float32)
            my = v.reshape(bh, bw).astype(np.float32)
            # Mirrored borders extend the background texture to an infinite plane: any fixed function
            # of the texture point keeps the flow exact.
            col = cv2.remap(layer.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            img[y0 : y1 + 1, x0 : x1 + 1][inside] = col[inside]
            inst[y0 : y1 + 1, x0 : x1 + 1][inside] = i
        return img, inst

    def flow(self, t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact flow from frame t to frame s (H x W x 2 float32) and frame t's occlusion mask."""
        h, w = self.config.height, self.config.width
        pts = self.grid.reshape(3, -1)
        vis = self.instances[t].ravel().astype(np.int64)
        dest = np.empty_like(pts)
        for i, layer in enumerate(self.layers):
            sel = vis == i
            if sel.any():
                m = layer.motion.pose(s) @ np.linalg.inv(layer.motion.pose(t))
                q = m @ pts[:, sel]
                dest[:, sel] = q / q[2]
        flow = (dest[:2] - pts[:2]).T.reshape(h, w, 2).astype(np.float32)
        occ = (dest[0] < 0) | (dest[0] > w - 1) | (dest[1] < 0) | (dest[1] > h - 1)
        for j in range(1, len(self.layers)):
            nearer = vis < j
            if nearer.any():
                occ[nearer] |= self.covers(j, s, dest[:, nearer])
        return flow, occ.reshape(h, w)


def make_scene(config: SceneConfig, rng: np.random.Generator) -> Scene:
    """Draw layers and motions, then render all frames (with lighting change and noise)."""
    h, w = config.height, config.width
    margin = int(0.25 * max(h, w)) + 8
    bh, bw = h + 2 * margin, w + 2 * margin
    bg_motion = Motion(
        center=np.array([(bw - 1) / 2, (bh - 1) / 2]), half=max(bh, bw) / 2,
        pos=np.array([(w - 1) / 2, (h - 1) / 2]), vel=_vec(rng, config.background_translation),
        angle=rng.uniform(-0.05, 0.05), spin=math.radians(rng.uniform(-1, 1) * config.max_rotation / 4),
        scale=rng.uniform(1.0, 1.1), zoom=rng.uniform(-1, 1) * config.max_scale / 2,
        aspect=0.0, stretch=0.0,
        persp=rng.uniform(-0.05, 0.05, 2), dpersp=rng.uniform(-1, 1, 2) * config.max_perspective / 2,
    )  # fmt: skip
    layers = [Layer(make_texture(rng, bh, bw), None, bg_motion, "background")]
    n_obj = int(rng.integers(config.min_objects, config.max_objects + 1))
    base = min(h, w)
    for k in range(n_obj):
        kind = SHAPES[k % len(SHAPES)] if k < len(SHAPES) else SHAPES[rng.integers(len(SHAPES))]
        oh = max(8, int(base * rng.uniform(*config.object_size)))
        ow = max(8, int(oh * rng.uniform(0.6, 1.6)))
        homography = rng.random() < config.homography_fraction
        motion = Motion(
            center=np.array([(ow - 1) / 2, (oh - 1) / 2]), half=max(oh, ow) / 2,
            pos=np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h]),
            vel=_vec(rng, config.max_translation),
            angle=rng.uniform(-np.pi, np.pi), spin=math.radians(rng.uniform(-1, 1) * config.max_rotation),
            scale=1.0, zoom=rng.uniform(-1, 1) * config.max_scale,
            aspect=0.0, stretch=rng.uniform(-1, 1) * config.max_scale / 2,
            persp=rng.uniform(-0.1, 0.1, 2) if homography else np.zeros(2),
            dpersp=rng.uniform(-1, 1, 2) * config.max_perspective if homography else np.zeros(2),
        )  # fmt: skip
        layers.append(Layer(make_texture(rng, oh, ow), make_shape(rng, oh, ow, kind), motion, kind))
    scene = Scene(config, layers)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for t in range(config.frames):
        img, inst = scene.render(t)
        if config.lighting > 0 and t > 0:
            # A global gain and a gentle left-right gradient, drawn afresh for each frame after the first.
            gain = 1 + config.lighting * rng.uniform(-1, 1)
            grad = config.lighting * rng.uniform(-1, 1) * (xx / w - 0.5)
            img = img * (gain + grad)[..., None]
        if config.noise > 0:
            img = img + rng.normal(0, config.noise, img.shape).astype(np.float32)
        scene.frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        scene.instances.append(inst)
    return scene


def _vec(rng: np.random.Generator, max_len: float) -> np.ndarray:
    ang, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0) * max_len
    return np.array([r * math.cos(ang), r * math.sin(ang)])


def instance_records(instances: np.ndarray) -> list[dict]:
    """The true segmentation as segment-anything automatic-mask-generator records (a perfect "SAM").

    One record per instance id present (background included), in the record format of
    pipeline.segmenters.base.RECORD_KEYS: bbox is SAM's XYWH with inclusive max corner, the prompt
    point is the mask pixel farthest from its border, and scores are 1.
    """
    h, w = instances.shape
    records = []
    for i in np.unique(instances):
        mask = instances == i
        ys, xs = np.nonzero(mask)
        dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
        py, px = np.unravel_index(int(dist.argmax()), dist.shape)
        records.append({
            "segmentation": mask,
            "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
            "predicted_iou": 1.0,
            "stability_score": 1.0,
            "point_coords": [[float(px), float(py)]],
            "crop_box": [0, 0, w, h],
        })  # fmt: skip
    return records
