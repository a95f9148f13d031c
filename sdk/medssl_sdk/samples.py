"""Synthetic phantoms: abdominal-CT-like volumes and chest-radiograph-like projections, with label maps.

For tests, demos and the ``phantom-mit-nano`` zoo entry; no patient data needed.

    image, labels = make_phantom(seed=3)                  # (64, 128, 128) HU at 3 x 1.5 x 1.5 mm, uint8 labels
    xray, xray_labels = make_radiograph(seed=3)           # (256, 256) in [0, 1] at 1 x 1 mm

The anatomy is drawn from the seed in world millimetres (RAS+: +x towards the patient's right, +y anterior,
+z superior, measured from the centre of the field of view), so one seed gives the same body at any shape
and spacing; only the sampling grid and the noise depend on them. Organs are deformed ellipsoids (random
radii, rotation and a smooth low-frequency wobble of the surface) jittered around their usual places:
liver on the right, spleen on the left, kidneys posterior on either side of the spine, lungs superior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medssl_sdk.volume import Volume

#: Organ names of the label maps; label ``i + 1`` is ``PHANTOM_LABELS[i]`` and 0 is background.
PHANTOM_LABELS: tuple[str, ...] = ("liver", "spleen", "left_kidney", "right_kidney", "spine", "lungs")

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
#: Linear attenuation of water for the radiograph, 1/mm (about 70 keV).
MU_WATER = 0.02
#: Water-equivalent path (mm) that maps to 1.0 in a radiograph.
RADIOGRAPH_FULL_SCALE_MM = 200.0
#: Spacing (mm) of the samples summed along the antero-posterior rays of a radiograph.
RADIOGRAPH_RAY_STEP_MM = 2.0


def label_of(name: str) -> int:
    """The label value of an organ of :data:`PHANTOM_LABELS`."""
    return 1 + PHANTOM_LABELS.index(name)


@dataclass(frozen=True)
class _SmoothField:
    """A smooth random field: ``sum_k a_k cos(f_k,x x + p_k,x) cos(f_k,y y + p_k,y) cos(f_k,z z + p_k,z)``.

    Separable terms keep it cheap on broadcast grids. ``frequencies`` and ``phases`` are (K, 3) in
    (x, y, z) order, rad/mm and rad; ``amplitudes`` (K,).
    """

    amplitudes: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, terms: int, wavelengths_mm: tuple[float, float], amplitude: float) -> _SmoothField:
        wavelengths = rng.uniform(*wavelengths_mm, size=(terms, 3))
        return cls(
            amplitudes=rng.uniform(0.5, 1.0, size=terms) * amplitude / terms,
            frequencies=2 * np.pi / wavelengths,
            phases=rng.uniform(0, 2 * np.pi, size=(terms, 3)),
        )

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values on the broadcast of ``x``, ``y``, ``z`` (mm)."""
        total = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
        for a, (fx, fy, fz), (px, py, pz) in zip(self.amplitudes, self.frequencies, self.phases):
            total += (a * np.cos(fx * x + px)) * np.cos(fy * y + py) * np.cos(fz * z + pz)
        return total


Wobble = tuple[np.ndarray, np.ndarray, np.ndarray]


def _wobbled_depth(local: Sequence[np.ndarray], wobble: Wobble) -> np.ndarray:
    """Normalised depth from normalised coordinates ``local`` (2 or 3 broadcastable arrays; the unit sphere or
    circle is the undeformed surface): radius over the surface radius ``1 + sum_k a_k cos(w_k . u + p_k)`` along
    the direction ``u``, with ``wobble = (a (K,), w (K, len(local)), p (K,))``."""
    radius = np.sqrt(sum(component**2 for component in local))
    direction = [component / np.maximum(radius, np.float32(1e-6)) for component in local]
    surface = np.float32(1.0)
    for a, w, p in zip(*wobble):
        surface = surface + np.float32(a) * np.cos(sum(np.float32(wi) * ui for wi, ui in zip(w, direction)) + np.float32(p))
    return radius / surface


@dataclass(frozen=True)
class _Ellipsoid:
    """A rotated ellipsoid whose surface wobbles smoothly with direction.

    ``centre`` (x, y, z) mm; ``radii`` (3,) mm along the ellipsoid's own axes; ``rotation`` (3, 3) with those
    axes as columns in RAS; ``wobble`` as in :func:`_wobbled_depth`, with (K, 3) directions.
    """

    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    wobble: Wobble

    @property
    def half_extent(self) -> np.ndarray:
        """(x, y, z) half sizes (mm) of a box around the centre that holds the shape."""
        return np.sqrt(((self.rotation * self.radii) ** 2).sum(axis=1)) * (1 + np.abs(self.wobble[0]).sum())

    def depth(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised depth on the broadcast grid of ``x``, ``y``, ``z`` (mm): 0 at the centre, 1 on the surface."""
        offsets = (x - np.float32(self.centre[0]), y - np.float32(self.centre[1]), z - np.float32(self.centre[2]))
        scales = (self.rotation / self.radii).astype(np.float32)
        local = [sum(scales[row, axis] * offsets[row] for row in range(3)) for axis in range(3)]
        return _wobbled_depth(local, self.wobble)


@dataclass(frozen=True)
class _Column:
    """An elliptic cylinder along z (body outline, spine, aorta): ``centre`` (x, y) mm, ``radii`` (x, y) mm,
    ``wobble`` as in :func:`_wobbled_depth`, with (K, 2) directions."""

    centre: np.ndarray
    radii: np.ndarray
    wobble: Wobble

    @property
    def half_extent(self) -> np.ndarray:
        """(x, y, z) half sizes (mm) of a box around the centre that holds the shape (unbounded along z)."""
        return np.array([*self.radii * (1 + np.abs(self.wobble[0]).sum()), np.inf])

    def depth(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised depth, as :meth:`_Ellipsoid.depth`; constant along z, so its shape broadcasts ``x`` and ``y`` only."""
        local = [(coordinate - np.float32(c)) / np.float32(r) for coordinate, c, r in zip((x, y), self.centre, self.radii)]
        return _wobbled_depth(local, self.wobble)


@dataclass(frozen=True)
class _Organ:
    """A labelled (or, with ``label`` 0, unlabelled) structure: ``hu`` inside, ``shell_hu`` where depth > ``shell_from``."""

    label: int
    shape: _Ellipsoid | _Column
    hu: float
    shell_hu: float | None = None
    shell_from: float = 1.0


@dataclass(frozen=True)
class _Anatomy:
    """One random body: its outline, subcutaneous fat, viscera filler, organs (painted in order, so the liver's dome
    cuts into the lung bases and the spine into whatever it touches), bias field."""

    body: _Column
    interior_depth: float
    viscera: _SmoothField
    organs: tuple[_Organ, ...]
    bias: _SmoothField


def _rotation(rng: np.random.Generator, max_degrees: Sequence[float], base_degrees: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """Rotation about x, then y, then z by ``base + U(-max, max)`` degrees each."""
    angles = np.radians(np.asarray(base_degrees, dtype=float) + rng.uniform(-1, 1, 3) * np.asarray(max_degrees, dtype=float))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def _ellipsoid(
    rng: np.random.Generator,
    centre: Sequence[float],
    radii: Sequence[float],
    max_degrees: Sequence[float] = (10, 10, 10),
    base_degrees: Sequence[float] = (0, 0, 0),
    wobble: float = 0.1,
) -> _Ellipsoid:
    """A deformed ellipsoid; ``wobble`` is the largest relative change of the surface radius."""
    return _Ellipsoid(
        centre=np.asarray(centre, dtype=float),
        radii=np.asarray(radii, dtype=float),
        rotation=_rotation(rng, max_degrees, base_degrees),
        wobble=_wobble(rng, wobble, 3),
    )


def _column(rng: np.random.Generator, centre: Sequence[float], radii: Sequence[float], wobble: float = 0.0) -> _Column:
    """A z-long elliptic cylinder at (x, y) ``centre``; ``wobble`` as in :func:`_ellipsoid`."""
    return _Column(np.array([*centre, 0.0]), np.asarray(radii, dtype=float), _wobble(rng, wobble, 2))


def _wobble(rng: np.random.Generator, amplitude: float, dims: int, terms: int = 4) -> Wobble:
    """Random surface wobble of at most ``amplitude`` (relative radius) for :func:`_wobbled_depth`."""
    return rng.uniform(0.3, 1.0, terms) * amplitude / terms, rng.normal(0, 2.5, (terms, dims)), rng.uniform(0, 2 * np.pi, terms)


def _random_anatomy(seed: int) -> _Anatomy:
    """Draw a body from ``seed``; every length is in mm from the field of view's centre (RAS+)."""
    rng = np.random.default_rng([seed, 0])
    u = rng.uniform
    ox, oy = u(-6, 6, 2)  # the body is not exactly centred
    bx, by = u(78, 90), u(58, 70)  # half width (left-right) and half depth (antero-posterior)
    fat = u(6, 14)
    spine_y = oy - by + u(22, 28)
    spine_r = u(11, 14)
    kidney_x, kidney_y, kidney_z = u(36, 44), spine_y + u(4, 12), u(-30, -15)
    lung_z = u(72, 86)
    aorta = _column(rng, (ox - u(12, 18), spine_y + spine_r + u(8, 12)), (u(8, 11),) * 2)
    lungs = [
        _ellipsoid(rng, (ox + side * u(38, 46), oy + u(-10, 0), lung_z + u(-4, 4)), (u(28, 34), u(38, 46), u(55, 65)),
                   (5, 5, 10), wobble=0.1)
        for side in (-1, 1)
    ]
    liver = _ellipsoid(rng, (ox + u(35, 45), oy + u(0, 10), u(0, 15)), (u(35, 42), u(38, 48), u(45, 55)), (15, 15, 20), wobble=0.15)
    spleen = _ellipsoid(rng, (ox - u(45, 55), oy + u(-25, -15), u(10, 25)), (u(15, 20), u(28, 35), u(30, 40)),
                        (15, 15, 25), (0, 0, -30), wobble=0.15)
    kidneys = {  # upper poles tilted towards the spine; the right kidney sits lower
        name: _ellipsoid(rng, (ox + side * kidney_x, kidney_y + u(-3, 3), kidney_z + drop + u(-5, 5)),
                         (u(16, 20), u(13, 17), u(35, 45)), (10, 10, 15), (0, side * 15, side * 20), wobble=0.08)
        for name, side, drop in (("left_kidney", -1, 0.0), ("right_kidney", 1, -u(5, 15)))
    }
    vertebral_body = _column(rng, (ox, spine_y), (spine_r, spine_r * u(0.8, 0.95)))
    spinous_process = _column(rng, (ox, spine_y - spine_r - u(8, 10)), (u(3, 5), u(9, 12)))
    organs = (
        _Organ(0, aorta, u(150, 220)),
        *(_Organ(label_of("lungs"), lung, u(-870, -830)) for lung in lungs),
        _Organ(label_of("liver"), liver, u(55, 68)),
        _Organ(label_of("spleen"), spleen, u(42, 50)),
        *(_Organ(label_of(name), kidney, u(25, 35), shell_hu=u(100, 140), shell_from=0.7) for name, kidney in kidneys.items()),
        _Organ(label_of("spine"), vertebral_body, u(250, 400), shell_hu=u(800, 1000), shell_from=0.85),
        _Organ(label_of("spine"), spinous_process, u(500, 700)),
    )
    return _Anatomy(
        body=_column(rng, (ox, oy), (bx, by), wobble=0.06),
        interior_depth=1 - fat / min(bx, by),
        viscera=_SmoothField.random(rng, terms=6, wavelengths_mm=(25, 70), amplitude=6.0),
        organs=organs,
        bias=_SmoothField.random(rng, terms=3, wavelengths_mm=(150, 400), amplitude=24.0),
    )


def _box(shape: _Ellipsoid | _Column, axes: Sequence[np.ndarray]) -> tuple[slice, ...] | None:
    """Index ranges of the grid (axes in array order: z, y, x coordinates) that can hold ``shape``; None if outside."""
    slices = []
    for coordinates, centre, half in zip(axes, shape.centre[::-1], shape.half_extent[::-1]):
        inside = np.flatnonzero(np.abs(coordinates - centre) <= half)
        if inside.size == 0:
            return None
        slices.append(slice(int(inside[0]), int(inside[-1]) + 1))
    return tuple(slices)


def _open_grid(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinate vectors as broadcastable (n, 1, 1), (1, n, 1), (1, 1, n) arrays."""
    z, y, x = (np.asarray(axis, dtype=np.float32) for axis in (z, y, x))
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _render(anatomy: _Anatomy, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and labels (uint8), both (len(z), len(y), len(x)), on a grid given by its monotonic
    world coordinate vectors (mm) along array axes 0, 1, 2."""
    axes = (z, y, x)
    grid = _open_grid(*axes)
    hu = np.full((len(z), len(y), len(x)), AIR_HU, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    body_depth = anatomy.body.depth(grid[2], grid[1], grid[0])
    body = np.broadcast_to(body_depth < 1, hu.shape)
    interior = np.broadcast_to(body_depth < anatomy.interior_depth, hu.shape)
    hu[body] = FAT_HU
    viscera = np.where(anatomy.viscera(grid[2], grid[1], grid[0]) > 0, SOFT_TISSUE_HU, FAT_HU).astype(np.float32)
    hu[interior] = viscera[interior]
    for organ in anatomy.organs:
        box = _box(organ.shape, axes)
        if box is None:
            continue
        local = _open_grid(*(axis[s] for axis, s in zip(axes, box)))
        depth = np.broadcast_to(organ.shape.depth(local[2], local[1], local[0]), hu[box].shape)
        mask = (depth < 1) & interior[box]
        values = np.full(depth.shape, organ.hu, dtype=np.float32)
        if organ.shell_hu is not None:
            values[depth > organ.shell_from] = organ.shell_hu
        hu[box][mask] = values[mask]
        labels[box][mask] = organ.label
    hu += np.where(body, anatomy.bias(grid[2], grid[1], grid[0]), np.float32(0))
    return hu, labels


def _centred_axis(size: int, step: float) -> np.ndarray:
    """World coordinates (mm) of ``size`` samples ``step`` apart, centred on 0, increasing."""
    return (np.arange(size) - (size - 1) / 2) * step


def _check_grid(shape: Sequence[int], spacing: Sequence[float], dims: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != dims or min(shape) < 1:
        raise ValueError(f"a {dims}D phantom needs a shape of {dims} positive sizes (array order); got {shape}")
    if len(spacing) != dims or min(spacing) <= 0:
        raise ValueError(f"a {dims}D phantom needs a spacing of {dims} positive numbers in mm (array order); got {spacing}")
    return shape, spacing


def make_phantom(
    seed: int, shape: Sequence[int] = (64, 128, 128), spacing: Sequence[float] = (3.0, 1.5, 1.5)
) -> tuple[Volume, Volume]:
    """An abdominal-CT-like volume and its label map.

    Args:
        seed: picks the anatomy (same at every shape/spacing) and the noise.
        shape: (D, H, W) voxels; the field of view is ``shape * spacing`` mm around the body's centre.
        spacing: (D, H, W) voxel size in mm.

    Returns:
        ``(image, labels)``: float32 HU (air -1000, fat -100, soft tissue 40, liver ~60, spleen ~45, kidneys ~30
        with a brighter cortex, bone 250-1000, lungs ~-850, a smooth bias of about +-20 HU and Gaussian noise
        of 10-20 HU) and uint8 labels (0 background, ``i + 1`` for ``PHANTOM_LABELS[i]``), both with the
        axis-aligned geometry of :meth:`Volume.from_array` (axis 0 superior, 1 anterior, 2 towards the right).
    """
    shape, spacing = _check_grid(shape, spacing, 3)
    axes = [_centred_axis(size, step) for size, step in zip(shape, spacing)]
    hu, labels = _render(_random_anatomy(seed), *axes)
    noise = np.random.default_rng([seed, 1])
    hu += noise.normal(0.0, noise.uniform(10, 20), hu.shape).astype(np.float32)
    np.maximum(hu, -1024.0, out=hu)
    metadata = {"source": f"phantom(seed={seed})", "modality": "CT"}
    image = Volume.from_array(hu, spacing, metadata)
    return image, image.with_array(labels, label_names=("background", *PHANTOM_LABELS))


def make_radiograph(seed: int, shape: Sequence[int] = (256, 256), spacing: Sequence[float] = (1.0, 1.0)) -> tuple[Volume, Volume]:
    """A frontal (AP) radiograph-like projection of the phantom of ``seed`` and its projected label map.

    Args:
        seed: the anatomy is that of ``make_phantom(seed)``.
        shape: (H, W) pixels: rows run from superior to inferior, columns from the patient's right to left
            (the usual viewing orientation of a frontal chest film).
        spacing: (H, W) pixel size in mm.

    Returns:
        ``(image, labels)``: float32 in [0, 1] (water-equivalent path length along the antero-posterior
        rays over 200 mm, so lungs are dark and bone bright, with a little noise) and uint8 labels (per
        pixel, the organ with the longest path along the ray; 0 where no organ is crossed). Their affine
        maps (row, column) to the coronal plane y = 0: row -> -z, column -> -x; the normal is +y.
    """
    shape, spacing = _check_grid(shape, spacing, 2)
    z = -_centred_axis(shape[0], spacing[0])
    x = -_centred_axis(shape[1], spacing[1])
    y = _centred_axis(int(2 * 120 / RADIOGRAPH_RAY_STEP_MM), RADIOGRAPH_RAY_STEP_MM)  # the body lies within +-100 mm
    hu, labels = _render(_random_anatomy(seed), z, y, x)
    attenuation = MU_WATER * np.clip(1 + hu / 1000, 0, None)
    image = attenuation.sum(axis=1) * RADIOGRAPH_RAY_STEP_MM / (MU_WATER * RADIOGRAPH_FULL_SCALE_MM)
    image += np.random.default_rng([seed, 2]).normal(0.0, 0.01, image.shape)
    paths = np.stack([(labels == value).sum(axis=1) for value in range(1, len(PHANTOM_LABELS) + 1)])
    projected = np.where(paths.max(axis=0) > 0, paths.argmax(axis=0) + 1, 0).astype(np.uint8)
    affine = np.zeros((4, 4))
    affine[2, 0] = -spacing[0]
    affine[0, 1] = -spacing[1]
    affine[1, 2] = 1.0
    affine[:3, 3] = (x[0], 0.0, z[0])
    affine[3, 3] = 1.0
    metadata = {"source": f"radiograph(seed={seed})", "modality": "DX"}
    radiograph = Volume(np.clip(image, 0, 1).astype(np.float32), affine, metadata)
    return radiograph, radiograph.with_array(projected, label_names=("background", *PHANTOM_LABELS))
