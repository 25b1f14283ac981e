"""Image folders as LitData shards: decode every file once, read chunks at training time; WebDataset tar shards read
as a second format.

`write_shards(folder, out)` decodes each image (PNG, JPEG, 8/16-bit TIFF, .npy) once with `litdata.optimize` and
stores the raw arrays (C, H, W, their own dtype) with label and relative path in chunk files, plus
`mimkit_shards.json` (channels, classes, counts, the files that could not be read and why). `ShardDataset` reads
them back through `litdata.StreamingDataset` as an indexable dataset, so pretraining keeps its resumable sampler
(disjoint samples per process, the same sample position after `--resume`) and its per-step augmentation; any
command that takes `--data` takes a shard folder in place of an image folder. A folder of WebDataset tar shards
(`000000.tar`, ...: samples `KEY.png` / `.jpg` / `.tif` / `.npy` with an optional `KEY.cls`) is read the same way by
`WebDatasetShards`: each tar's headers are indexed once and a sample's bytes read by offset, so the map-style sampler
keeps working (the webdataset package streams tars in order, which the resumable sampler cannot use).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import IMAGE_SUFFIXES, ImageFolderDataset, probe_image, read_image, scan_folder
from .errors import DataError

META = "mimkit_shards.json"
FORMAT = "mimkit-image-shards/1"


def is_shard_folder(path: str | Path) -> bool:
    """Whether `path` holds shards written by `write_shards` (LitData's index.json and mimkit's metadata)."""
    path = Path(path)
    return (path / "index.json").is_file() and (path / META).is_file()


def text_field(text: str) -> np.ndarray:
    """A string as a shard field: UTF-8 bytes in a uint8 array. LitData picks a serializer by content, and a string
    naming an existing file would be stored as that file's bytes (a scene's whole GeoTIFF, a NIfTI volume)."""
    return np.frombuffer(str(text).encode("utf-8"), np.uint8).copy()


def field_text(value) -> str:
    """The string stored by `text_field`."""
    return bytes(np.asarray(value, np.uint8)).decode("utf-8")


class _Decode:
    """Decodes one image file for `litdata.optimize` (checks its channels and values)."""

    def __init__(self, root: Path, in_chans: int):
        self.root, self.in_chans = root, in_chans

    def __call__(self, item) -> dict:
        index, path, label = item
        path = Path(path)
        image = read_image(path)
        if image.shape[0] != self.in_chans:
            raise DataError(f"{path}: decoded to {image.shape[0]} channel(s), expected {self.in_chans}")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise DataError(f"{path}: holds NaN or infinite pixel values")
        return {"image": np.ascontiguousarray(image), "label": int(label), "index": int(index),
                "path": text_field(path.relative_to(self.root))}


class _Logged:
    """The per-input step of `litdata.optimize`, a generator: an input whose `fn` raises DataError yields nothing and
    is written to `skip_log` (it runs in an optimize worker process: the file carries the reason back)."""

    def __init__(self, fn, skip_log: Path):
        self.fn, self.skip_log = fn, skip_log

    def __call__(self, item):
        try:
            sample = self.fn(item)
        except DataError as error:
            path = item.get("image") if isinstance(item, dict) else item[1] if isinstance(item, tuple) else item
            with open(self.skip_log, "a") as log:
                log.write(json.dumps({"path": str(path), "reason": str(error)}) + "\n")
            return
        yield sample


def check_out(out: str | Path, source: str | Path | None, overwrite: bool, is_ours) -> Path:
    """The resolved shard folder `out`, refused when it holds other files (or shards, without `overwrite`) or lies
    inside `source`; `is_ours(out)` says whether a folder holds shards of this kind."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"shard folder {str(out)!r} is not empty; choose another --out or pass --overwrite")
        if not is_ours(out):
            raise DataError(f"{str(out)!r} holds files that are not mimkit shards; refusing to overwrite it")
    if source is not None:
        root = Path(source).expanduser().resolve()
        if out == root or root in out.parents:
            raise DataError(f"--out {str(out)!r} must not lie inside the source folder {str(root)!r}")
    return out


def optimize(fn, inputs: Sequence, out: Path, chunk_bytes: str, num_workers: int) -> list[dict]:
    """`litdata.optimize` of `fn` over `inputs` into `out`, in the inputs' order; returns the inputs `fn` refused
    ({"path", "reason"}). `fn` must pickle: LitData's workers are spawned processes."""
    import multiprocessing

    import litdata

    out.mkdir(parents=True, exist_ok=True)
    # LitData sets the process-wide start method to spawn; put back what this process had (the data loaders of a run
    # started in the same process would otherwise pickle their datasets into spawned workers)
    start_method = multiprocessing.get_start_method(allow_none=True)
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "skipped.jsonl"
        log.touch()
        try:
            litdata.optimize(fn=_Logged(fn, log), inputs=list(inputs), output_dir=str(out), chunk_bytes=chunk_bytes,
                             num_workers=num_workers, mode="overwrite", verbose=False, keep_data_ordered=True)
        finally:
            multiprocessing.set_start_method(start_method, force=True)
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


class ReopensInWorkers:
    """Pickles without its open readers (the attributes named in `not_pickled`): each loader worker opens its own on
    first use (own_reader)."""

    not_pickled: tuple[str, ...] = ("stream",)

    def __getstate__(self):
        return {**self.__dict__, **dict.fromkeys(self.not_pickled)}

    def __setstate__(self, state):
        self.__dict__.update(state)


def own_reader(dataset, attribute: str = "stream"):
    """The dataset's LitData reader, opened again in a process that did not open it: a loader worker forked from the
    main process would otherwise share the main process's reader, whose chunk-loading thread it does not have."""
    from litdata import StreamingDataset

    if getattr(dataset, "_reader_pid", None) != os.getpid() or getattr(dataset, attribute, None) is None:
        setattr(dataset, attribute, StreamingDataset(str(dataset.root)))
        dataset._reader_pid = os.getpid()
    return getattr(dataset, attribute)


def read_meta(root: Path, name: str, expected_format: str) -> dict:
    """The metadata file `name` of a shard folder, checked to be of `expected_format`."""
    try:
        meta = json.loads((Path(root) / name).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{Path(root) / name} is not readable JSON: {error}") from None
    if meta.get("format") != expected_format:
        raise DataError(f"{Path(root) / name}: format {meta.get('format')!r}, expected {expected_format!r}")
    return meta


def write_meta(out: Path, name: str, meta: dict) -> None:
    """Write the metadata file last and atomically: a folder with it holds complete shards."""
    partial = out / (name + ".partial")
    partial.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(partial, out / name)


def write_shards(folder: str | Path, out: str | Path, chunk_bytes: str = "64MB", num_workers: int = 1,
                 labelled: bool | None = None, overwrite: bool = False) -> dict:
    """Decode the images of `folder` (flat, or one subfolder per class) once into LitData shards in `out`; returns
    the metadata written to OUT/mimkit_shards.json."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"shard source {str(root)!r} is not a folder of images")
    out = check_out(out, root, overwrite, is_shard_folder)
    files, targets, classes, labelled = scan_folder(root, IMAGE_SUFFIXES, labelled)
    if not files:
        raise DataError(f"no image files under {root} (accepted suffixes: {' '.join(IMAGE_SUFFIXES)})")
    skipped, shapes = [], {}
    for path in files:
        try:
            shapes[path] = probe_image(path)
        except DataError as error:
            skipped.append({"path": str(path), "reason": str(error)})
    if not shapes:
        raise DataError(f"none of the {len(files)} image files under {root} could be read; first: "
                        f"{skipped[0]['reason']}")
    channels = sorted({s[0] for s in shapes.values()})
    if len(channels) > 1:
        raise DataError(f"images under {root} have different channel counts {channels}; shard one kind at a time")
    targets = targets or [-1] * len(files)
    inputs = [(i, str(p), t) for i, (p, t) in enumerate(zip(files, targets)) if p in shapes]
    decode_failures = optimize(_Decode(root, channels[0]), inputs, out, chunk_bytes, num_workers)
    skipped += decode_failures
    count = len(inputs) - len(decode_failures)
    meta = {"format": FORMAT, "source": str(root), "count": count, "in_chans": channels[0], "classes": classes,
            "labelled": labelled, "skipped": skipped, "chunk_bytes": chunk_bytes}
    write_meta(out, META, meta)
    return meta


class ShardDataset(ReopensInWorkers, ImageFolderDataset):
    """Images from a shard folder, augmented and normalised exactly as `ImageFolderDataset` does (same arguments);
    `files` holds the stored relative paths, `skipped` what could not be read when the shards were written."""

    def _scan(self, labelled: bool | None) -> tuple[list[str], list[int], list[str]]:
        from litdata import StreamingDataset

        if not is_shard_folder(self.root):
            raise DataError(f"{self.root} is not a mimkit shard folder (expected index.json and {META}; write one with "
                            f"`mimkit shard FOLDER --out {self.root}`)")
        self.meta = read_meta(self.root, META, FORMAT)
        self.stream = StreamingDataset(str(self.root))
        self._reader_pid = os.getpid()
        if len(self.stream) != self.meta["count"]:
            raise DataError(f"{self.root}: the shards hold {len(self.stream)} samples but {META} says "
                            f"{self.meta['count']} (an interrupted write?); write them again")
        use_labels = self.meta["labelled"] if labelled is None else labelled and self.meta["labelled"]
        classes = list(self.meta["classes"]) if use_labels else []
        self._labels = use_labels
        return [f"{self.root}::{i}" for i in range(len(self.stream))], [], classes

    def _check_headers(self, in_chans: int | None) -> None:
        self.skipped.extend((Path(s["path"]), s["reason"]) for s in self.meta.get("skipped", []))
        stored = int(self.meta["in_chans"])
        if in_chans and in_chans != stored:
            raise DataError(f"the shards in {self.root} hold {stored}-channel images but in_chans is {in_chans}")
        self.in_chans = stored
        if self._labels:
            self.targets = [int(self.stream[i]["label"]) for i in range(len(self.stream))]

    def _read(self, index: int) -> np.ndarray:
        from .data import to_unit_range

        item = own_reader(self)[index]
        image = np.asarray(item["image"])
        if image.dtype.kind == "f" and not np.isfinite(image).all():  # written before a check, or edited since
            raise DataError(f"{self.root} sample {index} ({field_text(item['path'])}): NaN or infinite pixel values")
        return to_unit_range(image)



# ------------------------------------------------------------------------------------------ WebDataset tar shards
TAR_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "npy")


WEBDATASET_META = "mimkit_webdataset.json"
WEBDATASET_FORMAT = "mimkit-webdataset/1"


def is_webdataset_folder(path: str | Path) -> bool:
    """Whether `path` is a folder of WebDataset tar shards (.tar files, and `mimkit_webdataset.json` when mimkit wrote
    them; no LitData index)."""
    path = Path(path)
    if not path.is_dir() or (path / "index.json").exists():
        return False
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != WEBDATASET_META]
    return bool(files) and all(p.suffix == ".tar" for p in files)


def write_webdataset(folder: str | Path, out: str | Path, samples_per_shard: int = 1000,
                     labelled: bool | None = None, overwrite: bool = False) -> dict:
    """The images of `folder` (flat, or one subfolder per class) as WebDataset tar shards in `out`: 000000.tar, ...,
    each sample the file's own bytes as `KEY.<suffix>` (no re-encoding: the reader decodes what the folder path
    decodes) and, when labelled, `KEY.cls` holding the class index. Files that do not decode are left out and listed
    in OUT/mimkit_webdataset.json (written last: with it, the shards are complete) with the class names and counts."""
    import io
    import tarfile

    if samples_per_shard < 1:
        raise DataError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"shard source {str(root)!r} is not a folder of images")
    out = check_out(out, root, overwrite, is_webdataset_folder)
    files, targets, classes, labelled = scan_folder(root, IMAGE_SUFFIXES, labelled)
    if not files:
        raise DataError(f"no image files under {root} (accepted suffixes: {' '.join(IMAGE_SUFFIXES)})")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.tar"), out / WEBDATASET_META]:  # an overwrite leaves no shard of the last write
        stale.unlink(missing_ok=True)
    samples, skipped, channels = [], [], set()
    for path, target in zip(files, targets or [None] * len(files)):
        data, extension = path.read_bytes(), path.suffix.lower()[1:]
        try:
            probe_image(path)  # the folder path's check, then the reader's own decode of these bytes
            channels.add(int(decode_image(data, extension, str(path)).shape[0]))
        except DataError as error:
            skipped.append({"path": str(path), "reason": str(error)})
            continue
        samples.append((data, extension, target))
    if not samples:
        raise DataError(f"none of the {len(files)} image files under {root} could be read; first: "
                        f"{skipped[0]['reason']}")
    if len(channels) > 1:
        raise DataError(f"images under {root} have different channel counts {sorted(channels)}; shard one kind at a "
                        f"time")

    def member(tar, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(payload), 0o644, 0  # reproducible bytes for the same folder
        tar.addfile(info, io.BytesIO(payload))

    shards = 0
    for start in range(0, len(samples), samples_per_shard):
        target_path = out / f"{shards:06d}.tar"
        partial = out / f".{target_path.name}.partial"
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, min(start + samples_per_shard, len(samples))):
                data, extension, target = samples[index]
                member(tar, f"{index:09d}.{extension}", data)
                if labelled:
                    member(tar, f"{index:09d}.cls", str(target).encode())
        os.replace(partial, target_path)
        shards += 1
    meta = {"format": WEBDATASET_FORMAT, "source": str(root), "count": len(samples), "shards": shards,
            "in_chans": channels.pop(), "classes": classes, "labelled": labelled, "skipped": skipped}
    write_meta(out, WEBDATASET_META, meta)
    return meta


def index_tar(path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """The samples of one WebDataset tar in stored order: (key, {extension: (data offset, size)}); a sample's files
    share the key, the member path up to the first dot of its file name (WebDataset's convention)."""
    import tarfile

    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:  # headers only: the data is read by offset when a sample is asked for
                if member.isfile():
                    folder, name = os.path.split(member.name)
                    stem, _, extension = name.partition(".")
                    samples.setdefault(os.path.join(folder, stem), {})[extension.lower()] = (member.offset_data,
                                                                                            member.size)
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"{path}: cannot read as a tar shard ({type(error).__name__}: {error})") from None
    return list(samples.items())


def decode_image(data: bytes, extension: str, name: str) -> np.ndarray:
    """Decode an image file's bytes to (C, H, W) in its stored dtype, as core.data.read_image decodes the file."""
    import io

    import cv2
    import tifffile
    from PIL import Image

    from .data import _PIL_CONVERT, _tiff_channel_last

    try:
        if extension == "npy":
            array = np.load(io.BytesIO(data), allow_pickle=False)
            return array[None] if array.ndim == 2 else array
        if extension in ("tif", "tiff"):
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                array, axes = tif.series[0].asarray(), tif.series[0].axes
            if array.ndim == 2:
                return array[None]
            return np.moveaxis(array, -1, 0) if _tiff_channel_last(axes, array.shape, Path(name)) else array
        if extension == "png" and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 6):
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # PIL reads 16-bit colour as 8
            return np.moveaxis(array[..., [2, 1, 0, 3][: array.shape[2]]], -1, 0)
        with Image.open(io.BytesIO(data)) as img:
            if img.mode in _PIL_CONVERT:
                img = img.convert(_PIL_CONVERT[img.mode])
            array = np.asarray(img)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{name}: cannot decode image ({type(error).__name__}: {error})") from None


class WebDatasetShards(ImageFolderDataset):
    """Images from WebDataset tar shards (a folder of .tar files; each sample an image file, optionally a .cls
    label), read by offset so any sample can be asked for (the resumable sampler's order, per-step seeds, disjoint
    shares per process), augmented and normalised exactly as `ImageFolderDataset` (same arguments). A sample whose
    image fails to decode is skipped and counted when it is read."""

    def _scan(self, labelled: bool | None) -> tuple[list[Path], list[int], list[str]]:
        written = self.root / WEBDATASET_META
        self.meta = read_meta(self.root, WEBDATASET_META, WEBDATASET_FORMAT) if written.is_file() else {}
        self.entries = []
        for tar in sorted(self.root.glob("*.tar")):
            for key, members in index_tar(tar):
                image = next((e for e in TAR_IMAGE_EXTENSIONS if e in members), None)
                if image is not None:
                    self.entries.append((tar, key, image, members[image], members.get("cls")))
        if not self.entries:
            raise DataError(f"no image samples ({', '.join(TAR_IMAGE_EXTENSIONS)}) in the tar shards under {self.root}")
        has_labels = all(entry[4] is not None for entry in self.entries)
        files = [Path(f"{tar}/{key}.{image}") for tar, key, image, _, _ in self.entries]
        if not (has_labels if labelled is None else labelled and has_labels):
            return files, [], []
        values = [int(self._bytes(entry[0], entry[4]).decode().strip()) for entry in self.entries]
        named = self.meta.get("classes") or []
        if named and all(0 <= v < len(named) for v in values):  # written by write_webdataset: its class folders
            return files, values, list(named)
        classes = sorted(set(values))
        return files, [classes.index(v) for v in values], [str(c) for c in classes]

    @staticmethod
    def _bytes(tar: Path, span: tuple[int, int]) -> bytes:
        with open(tar, "rb") as handle:
            handle.seek(span[0])
            return handle.read(span[1])

    def _check_headers(self, in_chans: int | None) -> None:
        # a tar has no cheap per-file header: the first sample gives the channel count; a bad sample is skipped later
        self.skipped.extend((Path(s["path"]), s["reason"]) for s in self.meta.get("skipped", []))
        self.in_chans = in_chans or int(self.meta.get("in_chans") or self._decode(0).shape[0])

    def _decode(self, index: int) -> np.ndarray:
        tar, key, extension, span, _ = self.entries[index]
        return decode_image(self._bytes(tar, span), extension, str(self.files[index]))

    def _read(self, index: int) -> np.ndarray:
        from .data import check_finite, to_unit_range

        image = self._decode(index)
        if image.shape[0] != self.in_chans:
            raise DataError(f"{self.files[index]}: decoded to {image.shape[0]} channel(s), expected "
                            f"in_chans={self.in_chans}")
        check_finite(image, self.files[index])
        return to_unit_range(image)


def dataset_class(root: str | Path) -> type | None:
    """`ShardDataset` for a LitData shard folder, `WebDatasetShards` for a folder of tar shards, else None
    (core.data.image_dataset asks every folder format)."""
    if is_shard_folder(root):
        return ShardDataset
    return WebDatasetShards if is_webdataset_folder(root) else None


__all__ = ["write_shards", "ShardDataset", "is_shard_folder", "dataset_class", "META", "check_out", "optimize",
           "write_meta", "read_meta", "own_reader", "text_field", "field_text", "WebDatasetShards", "is_webdataset_folder", "index_tar", "decode_image",
           "write_webdataset", "WEBDATASET_META"]


def shard_summary(meta: dict, out: str | Path) -> Sequence[str]:
    """The lines `mimkit shard` prints."""
    tars = f" ({meta['shards']} WebDataset tar(s))" if meta.get("format") == WEBDATASET_FORMAT else ""
    lines = [f"wrote {meta['count']} images ({meta['in_chans']} channel(s)"
             f"{', ' + str(len(meta['classes'])) + ' classes' if meta['classes'] else ''}) as shards{tars} in {out}"]
    if meta["skipped"]:
        listed = WEBDATASET_META if tars else META
        lines.append(f"skipped {len(meta['skipped'])} unreadable file(s) (listed in {Path(out) / listed}); first: "
                     f"{meta['skipped'][0]['reason']}")
    return lines
