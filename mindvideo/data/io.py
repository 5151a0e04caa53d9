"""Reading fMRI runs, masks, stimulus videos and captions from disk.

Every reader returns plain numpy: an fMRI run is ``(T, V)`` float32 (time × voxels) plus its repetition time in
seconds as the file states it. Readers stream: a 4-D NIfTI is read in blocks of volumes and masked block by block,
a CIFTI-2 dense series in blocks of rows, so a one-hour run never sits in memory as a whole 4-D image; ``.npy``
runs are memory-mapped. Any unreadable input (missing, truncated, corrupt, wrong shape) raises
:class:`~mindvideo.errors.MindVideoError` naming the file, what was expected and what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config import Config
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
CIFTI_SUFFIX = ".dtseries.nii"
ARRAY_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")
BLOCK_VOLUMES = 32  # volumes read per block when streaming a 4-D image


@dataclasses.dataclass
class LoadConfig(Config):
    """How raw runs become ``(T, V_raw)`` arrays; saved inside the fitted transform so new scans load the same way.

    ``mask`` / ``atlas`` + ``labels`` pick voxels of a 4-D NIfTI (a label is an integer or a name looked up in
    ``<atlas>.json``); ``cifti_select`` picks grayordinates of a CIFTI-2 file: ``"cortex"`` (every
    ``CIFTI_STRUCTURE_CORTEX_*`` model, the 59,412 cortical vertices of HCP/Wen data), ``"first:N"``, ``"all"`` or
    a comma-separated list of structure names. ``tr`` is the expected repetition time (s): a file whose header
    says otherwise (beyond ``tr_tolerance``) is an error.
    """

    tr: float = 2.0
    tr_tolerance: float = 0.01
    mask: str | None = None
    atlas: str | None = None
    labels: tuple[str, ...] = ()
    cifti_select: str = "cortex"
    array_key: str | None = None


@dataclasses.dataclass
class FMRIRun:
    """One run: ``data`` (T, V) float32, ``tr`` in seconds (``None`` when the file does not say), ``source``."""

    data: np.ndarray
    tr: float | None
    source: Path


def suffix_of(path: str | Path) -> str:
    """The data suffix: ``.dtseries.nii``, ``.nii.gz``, ``.nii``, ``.npy``, … (lower case)."""
    name = Path(path).name.lower()
    for suffix in (CIFTI_SUFFIX, ".nii.gz", *ARRAY_SUFFIXES, ".nii"):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise MindVideoError(f"expected {what} at {path}", "no such file", "check the path")


def _unreadable(path: Path, what: str, exc: BaseException, fix: str = "re-export or re-download the file"):
    return MindVideoError(f"expected {what} at {path}", f"unreadable content ({type(exc).__name__}: {exc})", fix)


# --------------------------------------------------------------------------------------------------- dispatch


def load_run(path: str | Path, config: LoadConfig, mask: VoxelMask | None = None) -> FMRIRun:
    """Any supported run file as ``(T, V_raw)``, TR-checked against ``config.tr``.

    ``mask`` (already loaded) takes precedence over ``config.mask`` / ``config.atlas`` for NIfTI runs.
    """
    path = Path(path)
    _require_file(path, "an fMRI run (.nii, .nii.gz, .dtseries.nii, .npy, .npz, .h5)")
    suffix = suffix_of(path)
    if suffix == CIFTI_SUFFIX:
        run = load_cifti(path, config.cifti_select)
    elif suffix in NIFTI_SUFFIXES:
        if mask is None and (config.mask or config.atlas):
            mask = load_mask(config.mask, config.atlas, config.labels)
        run = load_nifti(path, mask)
    elif suffix in ARRAY_SUFFIXES:
        run = FMRIRun(as_run_matrix(load_array(path, config.array_key), path), None, path)
    else:
        raise MindVideoError(
            f"expected an fMRI run file (.nii, .nii.gz, .dtseries.nii, .npy, .npz, .h5) at {path}",
            f"suffix {suffix!r}",
            "convert the run to one of those formats",
        )
    check_tr(run.tr, config.tr, config.tr_tolerance, path)
    return run


def check_tr(found: float | None, expected: float, tolerance: float, source: Path) -> None:
    """Raise when a header's TR differs from the expected one; a missing/zero TR is trusted with a log line."""
    if found is None or not math.isfinite(found) or found <= 0:
        log.info("%s states no repetition time; assuming TR = %.3g s", source, expected)
        return
    if abs(found - expected) > tolerance:
        raise MindVideoError(
            f"expected TR = {expected:g} s in {source}",
            f"TR = {found:g} s in its header",
            "pass --tr with the scan's real TR, or resample the run to the same TR",
        )


# --------------------------------------------------------------------------------------------------- NIfTI


@dataclasses.dataclass
class VoxelMask:
    """A boolean 3-D mask (X, Y, Z) and its voxel-to-world affine; voxels are taken in C order (``np.where``)."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def count(self) -> int:
        return int(self.array.sum())


def _open_nifti(path: Path, what: str):
    import nibabel as nib

    _require_file(path, what)
    try:
        img = nib.load(str(path), keep_file_open=True) if path.name.endswith(".gz") else nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for garbage input; all are the user's file
        raise _unreadable(path, what, exc) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MindVideoError(f"expected {what} at {path}", type(img).__name__, "convert it to NIfTI")
    if not path.name.endswith(".gz"):  # a gzip stream's length is only known once it is read
        _check_size(img, path, what)
    return img


def _check_size(img, path: Path, what: str) -> None:
    """An uncompressed NIfTI shorter than its header promises is truncated: say so before reading."""
    header = getattr(img, "nifti_header", img.header)  # a CIFTI image keeps the NIfTI-2 header apart
    try:
        need = (
            int(header.get_data_offset()) + int(np.prod(img.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
        )
    except Exception as exc:
        raise _unreadable(path, what, exc) from None
    have = os.path.getsize(path)
    if have < need:
        raise MindVideoError(
            f"expected {what} of {need} bytes at {path} (shape {img.shape})",
            f"{have} bytes: the file is truncated",
            "copy or export the file again",
        )


def nifti_tr(header) -> float | None:
    """Repetition time in seconds from a NIfTI header (``pixdim[4]`` in its stated time unit)."""
    zooms = header.get_zooms()
    if len(zooms) < 4:
        return None
    try:
        unit = header.get_xyzt_units()[1]
    except KeyError:  # an invalid unit code: the TR cannot be trusted
        log.warning("unknown time unit code in a NIfTI header; ignoring its TR")
        return None
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    value = float(zooms[3]) * scale
    return value if value > 0 else None


def load_mask(
    mask: str | Path | None = None, atlas: str | Path | None = None, labels: tuple[str, ...] = ()
) -> VoxelMask:
    """A voxel mask from a 3-D mask file (non-zero = keep) or from an atlas and a list of labels.

    Labels are integers or names resolved through ``<atlas stem>.json`` (``{"V1": 1, …}``).
    """
    if (mask is None) == (atlas is None):
        raise MindVideoError(
            "expected exactly one of a mask file or an atlas",
            f"mask={mask}, atlas={atlas}",
            "pass --mask FILE, or --atlas FILE with --labels",
        )
    path = Path(mask if mask is not None else atlas)
    img = _open_nifti(path, "a 3-D mask/atlas NIfTI")
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise _unreadable(path, "a 3-D mask/atlas NIfTI", exc) from None
    array = array.reshape(array.shape[:3]) if array.ndim == 4 and array.shape[3] == 1 else array
    if array.ndim != 3:
        raise MindVideoError(f"expected a 3-D mask/atlas at {path}", f"shape {array.shape}", "pass a 3-D image")
    if atlas is not None:
        if not labels:
            raise MindVideoError("expected --labels with --atlas", "no labels", "e.g. --labels 1,2,3 or V1,V2")
        keep = np.isin(array, resolve_labels(path, labels))
    else:
        keep = np.nan_to_num(array) != 0
    if not keep.any():
        raise MindVideoError(
            f"expected at least one voxel in the mask {path}", "an empty mask", "check the mask file or the labels"
        )
    return VoxelMask(keep, np.asarray(img.affine, dtype=np.float64))


def resolve_labels(atlas: Path, labels: tuple[str, ...] | list[str]) -> list[int]:
    """Integer labels; names are looked up in the atlas's JSON sidecar (``atlas.nii.gz`` → ``atlas.json``)."""
    import json

    out, table = [], None
    for label in labels:
        label = str(label).strip()
        if label.lstrip("-").isdigit():
            out.append(int(label))
            continue
        if table is None:
            sidecar = atlas.parent / (atlas.name.split(".")[0] + ".json")
            try:
                table = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise MindVideoError(
                    f"expected a label table {sidecar} for the label name {label!r}",
                    str(exc),
                    "use integer labels or write the JSON sidecar",
                ) from None
        if label not in table:
            raise MindVideoError(f"expected label {label!r} in {atlas}", f"labels {sorted(table)}", "fix --labels")
        out.append(int(table[label]))
    return out


def load_nifti(path: str | Path, mask: VoxelMask | None = None, block: int = BLOCK_VOLUMES) -> FMRIRun:
    """A 4-D NIfTI run as ``(T, V)`` float32 over the mask's voxels (every voxel when ``mask`` is None).

    Read ``block`` volumes at a time, so peak memory is the output plus one block.
    """
    path = Path(path)
    what = "a 4-D NIfTI fMRI run"
    img = _open_nifti(path, what)
    if len(img.shape) != 4 or min(img.shape) < 1:
        raise MindVideoError(f"expected {what} at {path}", f"shape {img.shape}", "pass the 4-D functional image")
    if mask is None:
        mask = VoxelMask(np.ones(img.shape[:3], dtype=bool), np.asarray(img.affine))
    _check_mask(mask, img, path)
    n_vol = img.shape[3]
    try:
        out = np.empty((n_vol, mask.count), dtype=np.float32)
        for t0 in range(0, n_vol, block):
            chunk = np.asanyarray(img.dataobj[..., t0 : t0 + block])  # (X, Y, Z, b)
            out[t0 : t0 + chunk.shape[3]] = chunk[mask.array].T  # (b, V)
    except Exception as exc:  # truncated gzip streams, bad scaling, short reads
        raise _unreadable(path, what, exc) from None
    return FMRIRun(out, nifti_tr(img.header), path)


def _check_mask(mask: VoxelMask, img, path: Path) -> None:
    if mask.array.shape != tuple(img.shape[:3]):
        raise MindVideoError(
            f"expected a mask of the run's grid {tuple(img.shape[:3])} for {path}",
            f"mask shape {mask.array.shape}",
            "resample the mask to the functional image (e.g. nilearn resample_to_img)",
        )
    if not np.allclose(mask.affine, img.affine, atol=1e-3):
        raise MindVideoError(
            f"expected the mask to share the run's affine for {path}",
            "different affines",
            "resample the mask into the functional image's space",
        )


# --------------------------------------------------------------------------------------------------- CIFTI-2


def _cifti_axes(path: Path, what: str):
    """The opened dense series and its (series, brain-model) axes; errors name the file."""
    import nibabel as nib
    from nibabel import cifti2

    _require_file(path, what)
    try:
        img = nib.load(str(path))
        axes = (img.header.get_axis(0), img.header.get_axis(1)) if isinstance(img, cifti2.Cifti2Image) else None
    except Exception as exc:
        raise _unreadable(path, what, exc) from None
    if axes is None or not isinstance(axes[0], cifti2.SeriesAxis) or not isinstance(axes[1], cifti2.BrainModelAxis):
        raise MindVideoError(
            f"expected {what} at {path}",
            f"{type(img).__name__} without series × brain-model axes",
            "export the run as a dense time series (wb_command -cifti-create-dense-timeseries)",
        )
    return img, axes


def load_cifti(path: str | Path, select: str = "cortex", block: int = 256) -> FMRIRun:
    """A CIFTI-2 dense time series (``.dtseries.nii``) as ``(T, G)`` float32 over the selected grayordinates."""
    path = Path(path)
    what = "a CIFTI-2 dense time series (.dtseries.nii)"
    img, axes = _cifti_axes(path, what)
    if tuple(img.shape) != (axes[0].size, len(axes[1])):
        raise MindVideoError(
            f"expected {what} at {path} whose data matches its axes",
            f"data {img.shape} for {axes[0].size} time points × {len(axes[1])} grayordinates",
            "re-export the file",
        )
    _check_size(img, path, what)
    columns = cifti_columns(axes[1], select, path)
    contiguous = len(columns) > 0 and columns[-1] - columns[0] + 1 == len(columns)
    try:
        out = np.empty((img.shape[0], len(columns)), dtype=np.float32)
        for t0 in range(0, img.shape[0], block):
            if contiguous:
                rows = img.dataobj[t0 : t0 + block, int(columns[0]) : int(columns[-1]) + 1]
            else:
                rows = np.asanyarray(img.dataobj[t0 : t0 + block])[:, columns]
            out[t0 : t0 + rows.shape[0]] = rows
    except Exception as exc:
        raise _unreadable(path, what, exc) from None
    tr = float(axes[0].step) * {"SECOND": 1.0}.get(str(axes[0].unit).upper(), float("nan"))
    return FMRIRun(out, tr, path)


@dataclasses.dataclass
class Grayordinates:
    """Where the selected grayordinates of a CIFTI read live: per grayordinate its ``structure`` name, its surface
    ``vertex`` (-1 for a volume voxel) and volume ``voxel`` index (i, j, k; -1 for a vertex), plus the volume's
    ``affine`` and ``volume_shape`` and the surfaces' vertex counts. Saved with the fitted transform so that maps on
    the model's voxels can be written back as CIFTI / NIfTI without the original runs."""

    structure: np.ndarray  # (G,) str
    vertex: np.ndarray  # (G,) int64
    voxel: np.ndarray  # (G, 3) int64
    affine: np.ndarray | None
    volume_shape: tuple[int, int, int] | None
    nvertices: dict[str, int]

    @classmethod
    def from_file(cls, path: str | Path, select: str = "cortex") -> Grayordinates:
        """The grayordinates ``select`` picks in a CIFTI dense series (reads the header only)."""
        path = Path(path)
        _, axes = _cifti_axes(path, "a CIFTI-2 dense time series (.dtseries.nii)")
        models = axes[1][cifti_columns(axes[1], select, path)]
        return cls(
            np.asarray(models.name).astype(str),
            np.asarray(models.vertex, dtype=np.int64),
            np.asarray(models.voxel, dtype=np.int64),
            None if models.affine is None else np.asarray(models.affine, dtype=np.float64),
            None if models.volume_shape is None else tuple(int(n) for n in models.volume_shape),
            {str(k): int(v) for k, v in models.nvertices.items()},
        )

    def __len__(self) -> int:
        return len(self.structure)

    @property
    def in_volume(self) -> np.ndarray:
        """(G,) bool: grayordinates that are volume voxels."""
        return self.vertex < 0

    def axis(self):
        """The nibabel ``BrainModelAxis`` of these grayordinates (for writing CIFTI files)."""
        from nibabel.cifti2 import BrainModelAxis

        return BrainModelAxis(
            self.structure,
            voxel=self.voxel,
            vertex=self.vertex,
            affine=self.affine,
            volume_shape=self.volume_shape,
            nvertices=self.nvertices,
        )

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (for safetensors) and JSON metadata; structure names are stored run-length encoded."""
        starts = np.flatnonzero(np.r_[True, self.structure[1:] != self.structure[:-1]])
        counts = np.diff(np.r_[starts, len(self.structure)])
        arrays = {"gray_vertex": self.vertex, "gray_voxel": self.voxel}
        if self.affine is not None:
            arrays["gray_affine"] = self.affine
        meta = {
            "structures": [[str(self.structure[s]), int(c)] for s, c in zip(starts, counts)],
            "volume_shape": None if self.volume_shape is None else list(self.volume_shape),
            "nvertices": self.nvertices,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Grayordinates:
        structure = (
            np.concatenate([np.full(int(c), str(n)) for n, c in meta["structures"]])
            if meta["structures"]
            else np.zeros(0, str)
        )
        shape = meta.get("volume_shape")
        return cls(
            structure,
            arrays["gray_vertex"].astype(np.int64),
            arrays["gray_voxel"].astype(np.int64).reshape(-1, 3),
            arrays.get("gray_affine"),
            None if shape is None else tuple(int(n) for n in shape),
            {str(k): int(v) for k, v in meta.get("nvertices", {}).items()},
        )


def cifti_columns(models, select: str, source: Path | None = None) -> np.ndarray:
    """Indices of the grayordinates named by ``select`` (see :class:`LoadConfig`)."""
    names = np.asarray(models.name)
    select = select.strip()
    if select == "all":
        cols = np.arange(len(names))
    elif select == "cortex":
        cols = np.flatnonzero(np.char.find(names.astype(str), "CORTEX") >= 0)
    elif select.startswith("first:"):
        count = _positive_int(select[len("first:") :], "cifti selection first:N")
        if count > len(names):
            raise MindVideoError(
                f"expected at least {count} grayordinates in {source}",
                f"{len(names)}",
                "lower N in --cifti-select first:N",
            )
        cols = np.arange(count)
    else:
        from nibabel.cifti2 import BrainModelAxis

        wanted = [BrainModelAxis.to_cifti_brain_structure_name(s.strip()) for s in select.split(",") if s.strip()]
        cols = np.flatnonzero(np.isin(names, wanted))
    if len(cols) == 0:
        raise MindVideoError(
            f"expected grayordinates matching {select!r} in {source}",
            f"structures {sorted(set(names.tolist()))}",
            "pass --cifti-select all or first:N",
        )
    return cols.astype(np.int64)


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise MindVideoError(f"expected a positive integer for {what}", repr(text), "e.g. first:59412")
    return value


# --------------------------------------------------------------------------------------------------- arrays


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """A numeric array from ``.npy`` (memory-mapped), ``.npz`` or ``.h5`` (``key``: member/dataset name; may be
    omitted when the file holds exactly one). h5 datasets are read into memory; use ``.npy`` for very large runs."""
    path = Path(path)
    what = "a numeric array (.npy, .npz, .h5)"
    _require_file(path, what)
    suffix = suffix_of(path)
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                array = archive[_pick_key(list(archive.files), key, path)]
        elif suffix in (".h5", ".hdf5"):
            array = _load_h5(path, key)
        else:
            raise MindVideoError(f"expected {what} at {path}", f"suffix {suffix!r}", "convert it to .npy")
    except MindVideoError:
        raise
    except Exception as exc:
        raise _unreadable(path, what, exc) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        found = getattr(array, "dtype", type(array).__name__)
        raise MindVideoError(f"expected a numeric array in {path}", f"dtype {found}", "save a float array")
    return array


def _load_h5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as handle:
        names: list[str] = []
        handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        return np.asarray(handle[_pick_key(names, key, path)][()])


def _pick_key(names: list[str], key: str | None, path: Path) -> str:
    if key is not None:
        if key not in names:
            raise MindVideoError(f"expected an array named {key!r} in {path}", f"{names[:10]}", "fix --array-key")
        return key
    if len(names) != 1:
        raise MindVideoError(
            f"expected exactly one array in {path} (or --array-key)", f"{names[:10]}", "pass --array-key NAME"
        )
    return names[0]


def as_run_matrix(array: np.ndarray, source: Path) -> np.ndarray:
    """A ``(T, V)`` float32 run from a 2-D array (memory-mapped arrays stay mapped until they are used)."""
    if array.ndim != 2 or min(array.shape) < 1:
        raise MindVideoError(
            f"expected a (time, voxels) array in {source}",
            f"shape {array.shape}",
            "save one run per file as a 2-D array",
        )
    return array if array.dtype == np.float32 else array.astype(np.float32)


# --------------------------------------------------------------------------------------------------- video, text


def video_duration(path: str | Path) -> float:
    """Length of a video file in seconds (container duration, else frames / rate)."""
    import av

    path = Path(path)
    _require_file(path, "a stimulus video")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if container.duration:
                return float(container.duration) / av.time_base
            return float(stream.frames / stream.average_rate)
    except Exception as exc:
        raise _unreadable(path, "a stimulus video", exc) from None


def read_video(path: str | Path, *, n_trs: int, tr: float, fps: float, size: int, start: float = 0.0) -> np.ndarray:
    """Frames of ``n_trs`` TRs from ``start`` s: ``(n_trs, F, size, size, 3)`` uint8 with ``F = round(fps·tr)``.

    Frame ``i`` of TR ``t`` is the video frame shown at ``start + t·tr + i/fps`` (the last frame whose timestamp is
    not later), centre-cropped to a square and resized to ``size``. Frames are decoded once, in order.
    """
    import av

    path = Path(path)
    per_tr = max(1, round(fps * tr))
    targets = start + (np.arange(n_trs)[:, None] * tr + np.arange(per_tr)[None] / fps).ravel()
    out = np.empty((len(targets), size, size, 3), dtype=np.uint8)
    _require_file(path, "a stimulus video")
    k, last, last_time, period = 0, None, -1.0, 0.0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            period = 1.0 / float(stream.average_rate or 30)
            for frame in container.decode(stream):
                while k < len(targets) and targets[k] < float(frame.time) - 1e-6 and last is not None:
                    out[k], k = last, k + 1
                if k == len(targets):
                    break
                last, last_time = _square_rgb(frame, size), float(frame.time)
    except Exception as exc:
        raise _unreadable(path, "a stimulus video", exc) from None
    while k < len(targets) and last is not None and targets[k] < last_time + 1.5 * period:
        out[k], k = last, k + 1
    if k < len(targets):
        raise MindVideoError(
            f"expected {targets[-1] + 1 / fps:.1f} s of video in {path} for {n_trs} TRs",
            f"frames up to {max(last_time, 0):.1f} s",
            "check the onset table / the video",
        )
    return out.reshape(n_trs, per_tr, size, size, 3)


def _square_rgb(frame: Any, size: int) -> np.ndarray:
    """Scale so the short side is ``size`` (libswscale), then centre-crop: (size, size, 3) uint8."""
    scale = size / min(frame.width, frame.height)
    width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    top, left = (height - size) // 2, (width - size) // 2
    return rgb[top : top + size, left : left + size]


def progress_bar(items: Any, desc: str, enabled: bool):
    """A tqdm bar (use it as a context manager) shown only when ``enabled`` and stderr is a terminal; it is
    cleared when the block exits, so an error message never lands in the middle of a bar."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=None if enabled else True, leave=False)


def read_captions(path: str | Path) -> list[str]:
    """One caption per line (UTF-8); blank lines are kept as empty captions."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _unreadable(Path(path), "a caption file (one caption per TR)", exc) from None
