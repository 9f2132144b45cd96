"""WebDataset shards of clips: atomic writer, validating reader, whole-sequence reader.

Layout of one sample (one clip) inside a shard ``<corpus>-NNNNNN.tar``, key
``<corpus>__<sequence>__<first frame>``:

* ``<key>.meta.json``: ``{"format_version", "num_frames", "meta", "intrinsics", "extrinsics",
  "masks", "codecs"}`` (intrinsics/extrinsics as nested lists; ``extrinsics`` null when
  pose-free);
* ``<key>.rgb.NNNN.jpg``: frame ``NNNN`` (position in the clip) as JPEG, quality ≥ 95;
* ``<key>.depth.NNNN.png``: depth as **float16 bit patterns in a 16-bit greyscale PNG**.
  Why: float16 keeps a *relative* error ≤ 2⁻¹¹ ≈ 4.9e-4 over the whole range (metres near and
  far, or small disparities), where a scaled 16-bit integer PNG has a fixed *absolute* step that
  is too coarse near or too short far; PNG's lossless zlib then shrinks it 5-10× against raw
  ``.npy`` and decodes in a few ms. Values beyond float16's max (65504) saturate there.
  Other depth codecs (``write_corpus(depth_codec=...)``, ``gemdepth data synth/convert
  --depth-codec``; :data:`gemdepth.data.codecs.DEPTH_CODECS`) hold the same bit patterns:
  ``raw16`` as ``<key>.depth.NNNN.f16`` (uncompressed little-endian uint16, H·W·2 bytes) and
  ``zlib16`` as ``<key>.depth.NNNN.f16.zz`` (those bytes deflated). Why: PNG decoding is the
  training loader's slowest stage; raw16 costs nothing to decode (a view, cropped before any
  pixel is read) at ~8x the size, zlib16 ~3x less than PNG at about its size. Each sample's
  ``meta.json`` ``codecs.depth`` (``float16-png16``/``float16-raw16``/``float16-zlib16``;
  absent means png16) names its codec, the index's ``codecs`` the corpus's; readers accept all.
* ``<key>.sky.NNNN.png`` / ``<key>.valid.NNNN.png``: optional 1-bit PNG masks.

Each corpus folder holds ``index.json`` (shard names, sha256, clip/frame counts, keys, image
sizes, depth kind, ``has_pose``), always written atomically. A (re)write first replaces it by
one with ``"complete": false`` (before any shard is touched), and only marks it complete after
the last shard is in place and stale shards of an earlier run are gone: a writer killed at any
point leaves either the old complete corpus or one that every reader refuses. Readers refuse a
folder with an incomplete index or with shards but no index, and name the command that
finishes the corpus (``gemdepth data convert ... --resume``) or redoes it.

Tar reading and writing go through webdataset (``TarWriter``, ``tar_file_iterator``,
``group_by_keys``); decoding is ours so that the DataModule can decode only the frames it
samples and crop them as uint8 before resizing.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import braceexpand
import numpy as np
import webdataset as wds
from PIL import Image

from gemdepth.atomic import atomic_path, fsync_dir
from gemdepth.data import remote as _remote
from gemdepth.data.codecs import (
    DEPTH_CODECS,
    DEPTH_EXTENSIONS,
    encode_depth_bits,
    encode_png_mask,
    png16_rows,
    raw_depth_bits,
)
from gemdepth.data.remote import RemoteError, RemoteOptions
from gemdepth.data.schema import (
    FLOAT16_MAX,
    FORMAT_VERSION,
    MASK_FIELDS,
    PER_FRAME_META,
    ClipError,
    clip_key,
    sanitise_name,
    validate_clip,
)

__all__ = [
    "ShardError",
    "ChecksumError",
    "IncompleteCorpusError",
    "RemoteShardError",
    "remote_index",
    "require_complete",
    "write_corpus",
    "read_clips",
    "read_sequences",
    "read_index",
    "resolve_shards",
    "iter_raw_samples",
    "decode_sample",
    "decode_depth",
    "depth_codec_of",
    "recode_depth",
    "decode_depth_bits",
    "check_depth_png",
    "bits_to_depth",
    "parse_header",
    "sha256_file",
    "INDEX_NAME",
]

INDEX_NAME = "index.json"
_TMP_MARK = ".tmp-"
_CODECS = {"rgb": "jpeg", "depth": "float16-png16", "mask": "png1"}
_DEPTH_PREFIX = "float16-"


def _codecs(depth_codec: str = "png16") -> dict[str, str]:
    """The ``codecs`` entry of a sample header and an index for a depth codec."""
    if depth_codec not in DEPTH_CODECS:
        raise ValueError(f"unknown depth codec {depth_codec!r}; choose one of {DEPTH_CODECS}")
    return {**_CODECS, "depth": _DEPTH_PREFIX + depth_codec}


def depth_codec_of(header: dict, shard: str | None = None, key: str | None = None) -> str:
    """The depth codec (``png16``, ``raw16``, ``zlib16``) a sample header names (png16 when
    it names none, as every sample written before the choice existed)."""
    name = (header.get("codecs") or {}).get("depth", _CODECS["depth"])
    codec = name.removeprefix(_DEPTH_PREFIX) if isinstance(name, str) and name.startswith(
        _DEPTH_PREFIX) else None
    if codec not in DEPTH_CODECS:
        raise ShardError(f"depth codec {name!r} is unknown to this reader (it reads "
                         f"{[_DEPTH_PREFIX + c for c in DEPTH_CODECS]}); update gemdepth",
                         shard=shard, key=key, field="meta.json:codecs")
    return codec
PathLike = str | os.PathLike


class ShardError(ValueError):
    """A shard or one of its samples is unreadable or breaks the schema.

    ``shard``, ``key`` and ``field`` name where (any may be ``None``).
    """

    def __init__(self, message: str, shard: str | None = None, key: str | None = None,
                 field: str | None = None) -> None:
        where = ", ".join(p for p in (
            f"shard {shard}" if shard else "", f"sample {key}" if key else "",
            f"field {field!r}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.shard, self.key, self.field = shard, key, field


class ChecksumError(ShardError):
    """A shard's sha256 differs from the one its ``index.json`` lists (changed or corrupt)."""


class RemoteShardError(ShardError):
    """A shard (or index) URL that could not be fetched: missing (``missing``, e.g. HTTP 404;
    never retried) or still failing after the retries. ``shard`` is the URL, ``status`` the
    HTTP status when there was one, ``error`` the storage error in words."""

    def __init__(self, exc: RemoteError) -> None:
        tries = f" ({exc.attempts} attempts)" if exc.attempts > 1 else ""
        super().__init__(f"{exc.error}{tries}", shard=_remote.display(exc.url))
        self.url, self.status, self.missing, self.error = exc.url, exc.status, exc.missing, exc.error
        self.attempts = exc.attempts


class IncompleteCorpusError(ShardError):
    """A corpus folder without a complete ``index.json``: an interrupted or unfinished write.

    ``folder`` names it; the message says which command finishes or redoes it.
    """

    def __init__(self, message: str, folder: PathLike) -> None:
        super().__init__(message)
        self.folder = Path(folder)


#: Shards up to this size are read into memory once and hashed there, so checking the sha256
#: costs no second read; larger ones are hashed in a first pass.
_VERIFY_IN_MEMORY = 1 << 28


# --------------------------------------------------------------------------- encoding
def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _encode_depth(depth: np.ndarray, codec: str = "png16") -> bytes:
    bits = np.minimum(depth, FLOAT16_MAX).astype(np.float16).view(np.uint16)
    return encode_depth_bits(bits, codec)


def _encode_mask(mask: np.ndarray) -> bytes:
    return encode_png_mask(mask)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _encode_clip(clip: dict, key: str, jpeg_quality: int,
                 depth_codec: str = "png16") -> dict[str, Any]:
    """One webdataset sample dict (suffix -> bytes) of a validated clip."""
    t = clip["rgb"].shape[0]
    masks = [m for m in MASK_FIELDS if clip.get(m) is not None]
    header = {
        "format_version": FORMAT_VERSION,
        "num_frames": t,
        "meta": clip["meta"],
        "intrinsics": clip["intrinsics"].tolist(),
        "extrinsics": None if clip["extrinsics"] is None else clip["extrinsics"].tolist(),
        "masks": masks,
        "codecs": _codecs(depth_codec),
    }
    sample: dict[str, Any] = {
        "__key__": key,
        "meta.json": json.dumps(header, default=_json_default).encode("utf-8"),
    }
    for i in range(t):  # per-frame codecs: each frame is its own image file
        sample[f"rgb.{i:04d}.jpg"] = _encode_jpeg(clip["rgb"][i], jpeg_quality)
        sample[f"depth.{i:04d}.{DEPTH_EXTENSIONS[depth_codec]}"] = _encode_depth(
            clip["depth"][i], depth_codec)
        for m in masks:
            sample[f"{m}.{i:04d}.png"] = _encode_mask(clip[m][i])
    return sample


# --------------------------------------------------------------------------- files
def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()




def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_index(out: Path, index: dict) -> None:
    _atomic_write_bytes(out / INDEX_NAME, json.dumps(index, indent=1).encode("utf-8"))


def _write_shard(path: Path, samples: list[dict]) -> str:
    """Write samples to ``path`` atomically (temp name + fsync + rename); return its sha256."""
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            with wds.TarWriter(fh, mtime=0.0) as sink:  # fixed mtime: reproducible checksums
                for sample in samples:
                    sink.write(sample)
            fh.flush()
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest


def read_index(folder: PathLike) -> dict | None:
    """The ``index.json`` of a corpus folder, or ``None`` when there is none."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path} is not valid JSON ({exc}); delete it and re-create the corpus",
                         shard=str(path)) from exc


def _how_to_finish(folder: Path, index: dict | None) -> str:
    """The sentence naming the command that finishes (``--resume``) or redoes a corpus."""
    hint = (index or {}).get("resume_hint")
    if hint:
        return (f"finish it with `{hint}` (skips the shards already written and verified) or "
                "redo it by running that command without --resume")
    quoted = shlex.quote(str(folder))
    return (f"finish it with `gemdepth data convert FORMAT ROOT {quoted} --resume` (or "
            f"`gemdepth data synth --out {quoted} ... --resume` for the synthetic corpus), "
            "which skips the shards already written and verified, or redo it by running the "
            "same command without --resume")


def require_complete(folder: PathLike, index: dict | None = None) -> dict:
    """The index of a complete corpus folder (``index``, else read from ``folder``); a folder
    without a complete one raises :class:`IncompleteCorpusError` naming the command that
    finishes or redoes it."""
    folder = Path(folder)
    if index is None:
        index = read_index(folder)
    if index is None:
        n = len(list(folder.glob("*.tar")))
        raise IncompleteCorpusError(
            f"{folder}: holds {n} shard(s) but no {INDEX_NAME}, so it is not a complete corpus "
            "(an interrupted or unfinished conversion, or shards copied without their index); "
            + _how_to_finish(folder, None), folder)
    if not index.get("complete", False):
        raise IncompleteCorpusError(
            f"{folder}: corpus {index.get('corpus')!r} is incomplete (its {INDEX_NAME} says "
            "\"complete\": false: the writer was interrupted or is still running), so its shards "
            "are not read; " + _how_to_finish(folder, index), folder)
    return index


def _summarise(index: dict) -> None:
    """Fill the corpus-level totals of an index from its shard entries (in place)."""
    shards = index["shards"]
    index["clips"] = sum(s["clips"] for s in shards)
    index["frames"] = sum(s["frames"] for s in shards)
    index["sequences"] = len({q for s in shards for q in s["sequences"]})
    index["image_sizes"] = sorted({tuple(sz) for s in shards for sz in s["image_sizes"]})
    index["image_sizes"] = [list(sz) for sz in index["image_sizes"]]


# --------------------------------------------------------------------------- writer
def write_corpus(
    clips: Iterable[dict],
    out_dir: PathLike,
    corpus: str,
    clips_per_shard: int = 8,
    progress: bool = True,
    *,
    resume: bool = False,
    jpeg_quality: int = 95,
    total: int | None = None,
    source: dict[str, Any] | None = None,
    resume_hint: str | None = None,
    known_keys: set[str] | None = None,
    depth_codec: str = "png16",
) -> dict:
    """Write clips as WebDataset shards plus ``index.json`` into ``out_dir``; return the index.

    Every clip is validated (:func:`validate_clip`), must belong to ``corpus`` and agree with
    the corpus's first clip on ``depth_kind`` and ``has_pose``; keys must be unique.

    Crash safety: before any shard is touched, ``index.json`` is replaced (atomically) by one
    with ``"complete": false``, so from then on every reader refuses the folder; each shard is
    written under a temporary name and renamed when complete; the index is rewritten after
    every shard; at the end, shards of an earlier run that the new index does not list are
    deleted and only then is the index marked complete. A kill at any point leaves either the
    old complete corpus or a refused one, never old shards that pass as a corpus.

    ``resume=False`` (default) starts over. ``resume=True`` keeps the shards of an earlier
    (interrupted) run whose checksums still match (the verified prefix), skips clips whose keys
    they hold, and appends the rest; it refuses when the earlier run was made from another
    ``source``. ``source`` (what the corpus was made from and how: format, root, options) and
    ``resume_hint`` (the command that finishes an interrupted write, shown by readers that
    refuse it) are stored in the index. ``known_keys``, if given, is filled with the keys of the
    kept shards before the first clip is consumed, so a lazy clip source can skip building
    those clips. ``total`` (number of clips) only feeds the progress bar. ``depth_codec``:
    how depth frames are stored (``png16`` default, ``raw16``, ``zlib16``; see the module doc).
    """
    codecs = _codecs(depth_codec)
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    if not 95 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [95, 100] (the schema's floor), got {jpeg_quality}")
    if sanitise_name(corpus) != corpus:
        raise ValueError(f"corpus name {corpus!r} is not key-safe; use {sanitise_name(corpus)!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: give a folder for the shards and "
                         "index.json")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".*{_TMP_MARK}*"):  # temp files of a crashed run
        stale.unlink(missing_ok=True)

    index: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "corpus": corpus, "complete": False,
        "depth_kind": None, "has_pose": None, "licence": None, "codecs": codecs,
        "source": source, "resume_hint": resume_hint, "shards": [],
    }
    done_keys: set[str] = set()
    try:
        prior = read_index(out)
    except ShardError:
        if resume:
            raise
        prior = None  # an unreadable index is replaced by the fresh run
    if resume and prior is not None:
        if prior.get("corpus") != corpus:
            raise ValueError(f"{out / INDEX_NAME} belongs to corpus {prior.get('corpus')!r}, not "
                             f"{corpus!r}; write into another folder")
        if (source is not None and prior.get("source") is not None
                and prior["source"] != source):
            before = prior["source"]
            diff = {k: (before.get(k), source.get(k)) for k in sorted({*before, *source})
                    if before.get(k) != source.get(k)}
            raise ValueError(f"{out} was made with other settings (earlier, now: {diff}); --resume "
                             "only finishes the same conversion: re-run without --resume to "
                             "redo it")
        if prior["shards"] and prior.get("codecs", _CODECS) != codecs:
            raise ValueError(f"{out} was written with codecs {prior.get('codecs', _CODECS)}, "
                             f"this run asks for {codecs}: --resume only finishes the same "
                             "conversion (re-run without --resume, or with the earlier "
                             "--depth-codec)")
        for entry in prior["shards"]:  # keep the verified prefix
            path = out / entry["name"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                break
            index["shards"].append(entry)
            done_keys.update(entry["keys"])
        for k in ("depth_kind", "has_pose", "licence"):
            index[k] = prior.get(k) if index["shards"] else None
    stale_names = {s["name"] for s in prior.get("shards", [])} if prior else set()
    if known_keys is not None:
        known_keys.update(done_keys)

    items = iter(clips)
    first = next(items, None)  # nothing is touched before the first clip exists
    if first is None and not index["shards"]:
        raise ValueError(f"write_corpus got no clips for corpus {corpus!r}; nothing written to "
                         f"{out}")
    if index["shards"]:
        _summarise(index)
    _write_index(out, index)  # from here on, readers refuse the folder until the end

    seen: set[str] = set(done_keys)
    pending: list[dict] = []
    pending_info: list[tuple[str, str, int, list[int]]] = []  # key, sequence, frames, [H, W]
    next_id = len(index["shards"])

    def flush() -> None:
        nonlocal next_id
        name = f"{corpus}-{next_id:06d}.tar"
        digest = _write_shard(out / name, pending)
        index["shards"].append({
            "name": name, "sha256": digest, "bytes": (out / name).stat().st_size,
            "clips": len(pending), "frames": sum(p[2] for p in pending_info),
            "keys": [p[0] for p in pending_info],
            "sequences": sorted({p[1] for p in pending_info}),
            "image_sizes": sorted({tuple(p[3]) for p in pending_info}),
        })
        _summarise(index)
        _write_index(out, index)
        next_id += 1
        pending.clear()
        pending_info.clear()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"writing {corpus}", unit="clip")
    try:
        for clip in itertools.chain([] if first is None else [first], items):
            validate_clip(clip)
            meta = clip["meta"]
            if meta["corpus"] != corpus:
                raise ClipError(f"clip of corpus {meta['corpus']!r} given to write_corpus for "
                                f"{corpus!r}", field="meta.corpus")
            key = clip_key(corpus, meta["sequence"], meta["frame_indices"][0])
            if bar is not None:
                bar.update(1)
            if key in done_keys:
                continue
            if key in seen:
                raise ClipError(f"duplicate sample key {key!r} (same sequence and first frame "
                                "twice)", field="meta.frame_indices")
            seen.add(key)
            for k in ("depth_kind", "has_pose", "licence"):
                if index[k] is None:
                    index[k] = meta[k]
                elif k != "licence" and meta[k] != index[k]:
                    raise ClipError(f"clip {key} has {k}={meta[k]!r} but the corpus has "
                                    f"{index[k]!r} (one corpus, one {k})", field=f"meta.{k}")
            pending.append(_encode_clip(clip, key, jpeg_quality, depth_codec))
            pending_info.append((key, meta["sequence"], clip["rgb"].shape[0],
                                 list(clip["rgb"].shape[1:3])))
            if len(pending) == clips_per_shard:
                flush()
        if pending:
            flush()
    finally:
        if bar is not None:
            bar.close()
    keep = {s["name"] for s in index["shards"]}
    for name in stale_names | {p.name for p in out.glob(f"{corpus}-*.tar")}:
        if name not in keep:  # shards of an earlier, longer run: gone before "complete"
            (out / name).unlink(missing_ok=True)
    fsync_dir(out)
    index["complete"] = True
    _summarise(index)
    _write_index(out, index)
    return index


def recode_depth(src: PathLike, dst: PathLike, depth_codec: str) -> dict:
    """Copy the local corpus folder ``src`` into ``dst`` with every depth frame re-encoded in
    ``depth_codec`` (the same bit patterns; RGB, masks and cameras byte for byte); return the
    new index. Shards are checked against ``src``'s sha256 and written atomically; the index
    is marked complete only at the end.
    """
    src, out = Path(src), Path(dst)
    if src.resolve() == out.resolve():
        raise ValueError(f"recode_depth writes a new corpus: give another folder than {src}")
    index = json.loads(json.dumps(require_complete(src)))
    codecs = _codecs(depth_codec)
    ext = DEPTH_EXTENSIONS[depth_codec]
    out.mkdir(parents=True, exist_ok=True)
    _write_index(out, {**index, "complete": False})
    for entry in index["shards"]:
        samples = []
        for raw in iter_raw_samples(src / entry["name"], entry.get("sha256")):
            header = parse_header(raw)
            old = DEPTH_EXTENSIONS[depth_codec_of(header, raw.get("__url__"), raw["__key__"])]
            sample = {k: v for k, v in raw.items() if k != "__url__"
                      and not (k.startswith("depth.") and k.endswith("." + old))}
            size = _stored_size(header["meta"])
            for i in range(int(header["num_frames"])):
                where = (str(src / entry["name"]), raw["__key__"], "depth")
                bits = decode_depth_bits(_frame_field(raw, "depth", i, old), where,
                                         depth_codec_of(header), size)
                sample[f"depth.{i:04d}.{ext}"] = encode_depth_bits(
                    np.ascontiguousarray(bits, dtype=np.uint16), depth_codec)
            header["codecs"] = codecs
            sample["meta.json"] = json.dumps(header, default=_json_default).encode("utf-8")
            samples.append(sample)
        entry["sha256"] = _write_shard(out / entry["name"], samples)
        entry["bytes"] = (out / entry["name"]).stat().st_size
    index.update(codecs=codecs, complete=True, resume_hint=None)
    _write_index(out, index)
    return index


# --------------------------------------------------------------------------- locating shards
def resolve_shards(path: PathLike | Sequence[PathLike], remote: RemoteOptions | None = None
                   ) -> list[tuple[Path | str, str | None]]:
    """Shard files of a shard, a corpus folder, a folder of corpus folders or a brace pattern,
    local or as URLs (:mod:`gemdepth.data.remote`: ``http(s)://``, fsspec URLs, ``pipe:``;
    URL shards come back as ``str``, fetched with ``remote``'s retries and timeouts).

    Returns ``(shard path, expected sha256)`` pairs in reading order; checksums come from the
    ``index.json`` beside the shards. Every shard must be listed in a complete index: a folder
    with an incomplete index, or with shards but no index (an interrupted conversion), raises
    :class:`IncompleteCorpusError` naming the command that finishes or redoes it, and so does a
    shard file whose folder has no complete index; a shard file its index does not list raises
    :class:`ShardError`. Missing or empty locations raise ``FileNotFoundError`` with the fix.
    """
    if isinstance(path, (list, tuple)):
        return [item for p in path for item in resolve_shards(p, remote)]
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if _remote.is_url(text):
        return _resolve_remote(text, remote or RemoteOptions())
    if "{" in text and "}" in text:
        return [item for p in braceexpand.braceexpand(text) for item in resolve_shards(p)]
    p = Path(text)
    if p.is_file():
        index = require_complete(p.parent, read_index(p.parent))
        sums = {s["name"]: s["sha256"] for s in index["shards"]}
        if p.name not in sums:
            raise ShardError(f"not listed in {p.parent / INDEX_NAME} (a stale shard of an earlier "
                             "run, or a file that does not belong to this corpus); read the corpus "
                             "folder instead, or re-create the corpus", shard=str(p))
        return [(p, sums[p.name])]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such shard or folder (make shards with "
                                "`gemdepth data synth` or `gemdepth data convert`)")
    index = read_index(p)
    if index is not None or any(p.glob("*.tar")):
        index = require_complete(p, index)
        return [(p / s["name"], s["sha256"]) for s in index["shards"]]
    corpora = sorted(d for d in p.iterdir()
                     if d.is_dir() and ((d / INDEX_NAME).is_file() or any(d.glob("*.tar"))))
    if corpora:
        return [item for d in corpora for item in resolve_shards(d)]
    raise FileNotFoundError(f"{p}: folder holds no shards (*.tar) and no corpus folders with "
                            f"{INDEX_NAME}; make shards with `gemdepth data synth` or "
                            "`gemdepth data convert`")


#: Complete indexes of remote corpora already read by this process (URL -> index).
_REMOTE_INDEXES: dict[str, dict] = {}


def remote_index(corpus: str, remote: RemoteOptions | None = None,
                 required: bool = True) -> dict | None:
    """The complete ``index.json`` of a remote corpus (URL or ``pipe:`` template), read once per
    process. A missing one raises :class:`IncompleteCorpusError` (``None`` if not
    ``required``); an incomplete one raises it too; other failures raise
    :class:`RemoteShardError` naming the URL."""
    if corpus in _REMOTE_INDEXES:
        return _REMOTE_INDEXES[corpus]
    url = _remote.join_url(corpus, INDEX_NAME)
    shown = _remote.display(url)
    try:
        index = _remote.fetch_json(url, remote)
    except RemoteError as exc:
        if exc.missing and not required:
            return None
        if exc.missing:
            raise IncompleteCorpusError(
                f"{shown}: not found ({exc.error}), so the shards beside it are not a complete "
                f"corpus; upload the corpus folder with its {INDEX_NAME} (written last by "
                "`gemdepth data convert`/`synth`), or give the corpus URL", corpus) from exc
        raise RemoteShardError(exc) from exc
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise ShardError(f"{shown} is not a gemdepth corpus index (no 'shards' list)", shard=shown)
    if not index.get("complete", False):
        raise IncompleteCorpusError(
            f"{shown}: corpus {index.get('corpus')!r} is incomplete (\"complete\": false: its "
            "writer was interrupted or was still running when it was uploaded), so its shards "
            "are not read; finish it where it was written (" + _how_to_finish(Path("CORPUS"), index)
            + ") and upload it again", corpus)
    _REMOTE_INDEXES[corpus] = index
    return index


def _resolve_remote(text: str, opts: RemoteOptions) -> list[tuple[str, str | None]]:
    """:func:`resolve_shards` of a URL (pattern): shard URLs with their sha256 from the index."""
    out: list[tuple[str, str | None]] = []
    for url in _remote.expand(text):
        name = _remote.shard_url_name(url)
        if name.endswith(".tar"):
            corpus = _remote.parent_url(url)
            index = remote_index(corpus, opts)
            sums = {s["name"]: s["sha256"] for s in index["shards"]}
            if name not in sums:
                raise ShardError(f"not listed in {_remote.display(_remote.join_url(corpus, INDEX_NAME))} "
                                 "(a stale shard, or one of another corpus); give the corpus URL "
                                 "instead", shard=_remote.display(url))
            out.append((url, sums[name]))
            continue
        index = remote_index(url, opts, required=False)
        corpora = [(url, index)] if index is not None else [
            (c, i) for c in _remote.corpus_candidates(url, opts)
            if (i := remote_index(c, opts, required=False)) is not None]
        if not corpora:
            raise FileNotFoundError(
                f"{_remote.display(_remote.join_url(url, INDEX_NAME))}: not found, and "
                f"{_remote.display(url)} lists no corpus folders with one; give the URL of a "
                "corpus folder (the one holding index.json and the shards) or of its shards")
        out += [(_remote.join_url(c, s["name"]), s["sha256"]) for c, i in corpora
                for s in i["shards"]]
    return out


def remote_shard_bytes(url: str, remote: RemoteOptions | None = None) -> int | None:
    """The size a remote shard's index gives it (``None`` when unknown)."""
    try:
        index = remote_index(_remote.parent_url(url), remote, required=False)
    except (ShardError, ValueError):
        return None
    name = _remote.shard_url_name(url)
    for s in (index or {}).get("shards", []):
        if s.get("name") == name:
            return s.get("bytes")
    return None


# --------------------------------------------------------------------------- reading
def _open_remote_verified(url: str, sha256: str | None, size: int | None = None,
                          remote: RemoteOptions | None = None) -> BinaryIO:
    """:func:`_open_verified` of a URL: downloaded whole and hashed on the way
    (:func:`gemdepth.data.remote.fetch`: retries, timeouts; ``size`` from the index makes a
    short body a retried truncation), so a mismatch is found before any sample is read. With
    ``remote.cache_dir`` a cached copy is read instead (checked like a local shard; a stale
    one is fetched again) and a fetched one is cached."""
    cached = _remote.cache_path(url, remote)
    if cached is not None and cached.is_file():
        try:
            return _open_verified(str(cached), sha256)
        except (ChecksumError, OSError):
            cached.unlink(missing_ok=True)  # the corpus changed (or the copy did): fetch again
    try:
        fh, actual = _remote.fetch(url, remote, size=size)
    except RemoteError as exc:
        raise RemoteShardError(exc) from exc
    if sha256 is not None and actual != sha256:
        fh.close()
        raise ChecksumError(f"checksum mismatch with {INDEX_NAME} (expected {sha256[:12]}…, "
                            f"got {actual[:12]}…): the object is corrupt or was changed; "
                            "re-create and re-upload the corpus", shard=_remote.display(url))
    if cached is not None and sha256 is not None:  # only verified bytes are cached
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 22)
        except OSError as exc:  # a full or read-only cache: go on without it
            logging.getLogger(__name__).warning("cannot cache %s in %s: %s",
                                                _remote.display(url), cached.parent, exc)
        fh.seek(0)
    return fh


def _open_verified(shard: str, sha256: str | None) -> BinaryIO:
    """The shard's bytes as a file object, checked against ``sha256`` before anything is read
    from it (:class:`ChecksumError` otherwise). Small shards are read once into memory and
    hashed there (no second read); larger ones get a hashing pass first."""
    if sha256 is None:
        return open(shard, "rb")
    if os.path.getsize(shard) <= _VERIFY_IN_MEMORY:
        with open(shard, "rb") as fh:
            data = fh.read()
        actual, fh = hashlib.sha256(data).hexdigest(), io.BytesIO(data)
    else:
        actual, fh = sha256_file(shard), open(shard, "rb")
    if actual != sha256:
        fh.close()
        raise ChecksumError(f"checksum mismatch with {INDEX_NAME} (expected {sha256[:12]}…, got "
                            f"{actual[:12]}…): the file is corrupt or was changed; re-create the "
                            "corpus", shard=shard)
    return fh


def _seekable_tar_files(fh: BinaryIO) -> Iterator[dict[str, Any]]:
    """``{fname, data}`` of a seekable tar's regular files, as webdataset's
    ``tar_file_iterator`` gives them (same metadata skipped).

    Why: webdataset reads in stream mode, 10 KB per read joined per member (~4x the CPU of one
    read per member here for raw16 depth, whose members are megabytes).
    """
    with tarfile.open(fileobj=fh, mode="r:*") as tar:
        for info in tar:
            name = info.name
            if not info.isreg() or re.match(r"__[^/]*__($|/)", name) or (
                    "/" not in name and name.startswith("__") and name.endswith("__")):
                continue
            member = tar.extractfile(info)
            data = member.read() if member is not None else b""
            if len(data) != info.size:
                raise tarfile.ReadError(f"unexpected end of data in {name}")
            yield {"fname": name, "data": data}


def iter_raw_samples(shard: PathLike, sha256: str | None = None, *, size: int | None = None,
                     remote: RemoteOptions | None = None) -> Iterator[dict[str, Any]]:
    """Undecoded samples (``__key__``, ``__url__`` and suffix -> bytes) of one shard (a file or
    a URL: see :mod:`gemdepth.data.remote`; ``size`` and ``remote`` apply to URLs).

    With ``sha256`` the whole file is checked against it before the first sample is yielded
    (:class:`ChecksumError`), so a changed shard yields nothing. A corrupt or truncated tar
    raises :class:`ShardError` naming the shard and the last good sample; a URL that cannot be
    fetched raises :class:`RemoteShardError`.
    """
    shard = os.fspath(shard)
    last = None
    try:
        with (_open_remote_verified(shard, sha256, size, remote) if _remote.is_url(shard)
              else _open_verified(shard, sha256)) as fh:
            files = (_seekable_tar_files(fh) if fh.seekable()
                     else wds.tariterators.tar_file_iterator(fh))
            files = ({**f, "__url__": shard} for f in files)
            for sample in wds.tariterators.group_by_keys(files):
                last = sample["__key__"]
                yield sample
    except (tarfile.TarError, OSError, EOFError) as exc:
        after = f" after sample {last}" if last else ""
        raise ShardError(f"corrupt or truncated tar{after} ({exc}); re-create the shard",
                         shard=shard) from exc


def _decode_image(data: bytes, where: tuple[str, str, str], mode: str | None = None) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data))
        if mode is not None and img.mode != mode:
            img = img.convert(mode)
        return np.asarray(img)
    except Exception as exc:  # PIL raises many types for broken files
        raise ShardError(f"undecodable image ({exc})", shard=where[0], key=where[1],
                         field=where[2]) from exc


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


def check_depth_png(data: bytes, where: tuple[str, str, str]) -> None:
    """Refuse a depth payload that is not a 16-bit greyscale PNG (read from its IHDR header).

    Why: PIL widens an 8-bit or colour PNG without complaint, and those bits read as float16
    give absurd depths (an 8-bit value v becomes the float16 with bit pattern v, ~1e-5 m).
    """
    if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ShardError("depth is not a PNG (the schema stores depth as float16 bit patterns "
                         "in a 16-bit greyscale PNG); re-create the shard", shard=where[0],
                         key=where[1], field=where[2])
    bit_depth, colour = data[24], data[25]
    if bit_depth != 16 or colour != 0:
        kind = f"{bit_depth}-bit {_PNG_COLOUR_TYPES.get(colour, f'colour type {colour}')}"
        raise ShardError(f"depth PNG is {kind}, but only 16-bit greyscale PNGs (float16 bit "
                         "patterns) are valid depth; it was not written by gemdepth's shard "
                         "writer: re-create the shard with `gemdepth data convert`/`synth`",
                         shard=where[0], key=where[1], field=where[2])


def decode_depth_bits(data: bytes, where: tuple[str, str, str] = ("?", "?", "depth"),
                      codec: str = "png16", shape: tuple[int, int] | None = None) -> np.ndarray:
    """The uint16 float16-bit patterns of a depth payload, native or big-endian (crop these
    first, then :func:`bits_to_depth` or ``.astype(np.uint16)``, to convert only the pixels in
    use). ``png16``: anything but a 16-bit greyscale PNG raises :class:`ShardError`; the shard
    writer's PNGs come as a big-endian view (:func:`~gemdepth.data.codecs.png16_rows`, no
    libpng), others through PIL, damaged image data raise; ``raw16``/``zlib16`` need the
    frame's ``shape`` ``(H, W)`` and give a read-only little-endian view (a wrong size raises)."""
    if codec != "png16":
        if shape is None:
            raise ShardError(f"a {codec} depth payload needs the clip's image size to decode",
                             shard=where[0], key=where[1], field=where[2])
        try:
            return raw_depth_bits(data, codec, shape)
        except ValueError as exc:
            raise ShardError(f"{exc}; re-create the shard", shard=where[0], key=where[1],
                             field=where[2]) from exc
    check_depth_png(data, where)
    try:  # the writer's own (Up-filtered) PNGs without libpng; damaged image data raise
        rows = png16_rows(data)
    except ValueError as exc:
        raise ShardError(f"undecodable image ({exc})", shard=where[0], key=where[1],
                         field=where[2]) from exc
    if rows is not None:
        return rows  # big-endian: crop first, the conversion reads only the pixels kept
    bits = _decode_image(data, where)
    if bits.dtype != np.uint16:  # PIL may widen 16-bit PNGs to int32 ("I" mode)
        bits = bits.astype(np.uint16)
    return bits


def bits_to_depth(bits: np.ndarray) -> np.ndarray:
    """float32 depth of float16 bit patterns (uint16, either byte order)."""
    bits = bits.astype(np.uint16, copy=False)  # a no-op but for big-endian hosts reading raw16
    return bits.view(np.float16).astype(np.float32)


def decode_depth(data: bytes, where: tuple[str, str, str] = ("?", "?", "depth"),
                 codec: str = "png16", shape: tuple[int, int] | None = None) -> np.ndarray:
    """float32 depth of a depth payload (see :func:`decode_depth_bits`)."""
    return bits_to_depth(decode_depth_bits(data, where, codec, shape))


def parse_header(sample: dict[str, Any]) -> dict:
    """The parsed ``meta.json`` of a raw sample, checked for format version and frame count."""
    shard, key = sample.get("__url__"), sample.get("__key__")
    if "meta.json" not in sample:
        raise ShardError("missing meta.json", shard=shard, key=key, field="meta.json")
    try:
        header = json.loads(sample["meta.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"meta.json is not valid JSON ({exc})", shard=shard, key=key,
                         field="meta.json") from exc
    for k in ("format_version", "num_frames", "meta", "intrinsics", "extrinsics"):
        if k not in header:
            raise ShardError(f"meta.json lacks {k!r}", shard=shard, key=key, field=f"meta.json:{k}")
    if header["format_version"] > FORMAT_VERSION:
        raise ShardError(f"format version {header['format_version']} is newer than this reader's "
                         f"{FORMAT_VERSION}; update gemdepth", shard=shard, key=key)
    return header


def _frame_field(sample: dict, name: str, i: int, ext: str) -> bytes:
    suffix = f"{name}.{i:04d}.{ext}"
    if suffix not in sample:
        raise ShardError(f"frame {i} missing ({suffix})", shard=sample.get("__url__"),
                         key=sample.get("__key__"), field=name)
    return sample[suffix]


def decode_sample(
    sample: dict[str, Any],
    frames: Sequence[int] | np.ndarray | None = None,
    validate: bool = True,
    lazy: bool = False,
) -> dict:
    """Clip dict of a raw sample, decoding only ``frames`` (positions in the clip) if given.

    ``lazy=True`` leaves ``rgb``, ``depth`` and masks as lists of undecoded per-frame payloads
    (JPEG, float16-PNG, PNG) for callers that crop before converting (the DataModule); the
    cameras and meta are still checked, pixel values are then the caller's to check. Every
    frame's files must be present either way. Schema problems raise :class:`ShardError`
    naming shard, key and field.
    """
    shard, key = sample.get("__url__"), sample.get("__key__")
    header = parse_header(sample)
    t = int(header["num_frames"])
    sel = np.arange(t) if frames is None else np.asarray(frames, dtype=np.int64)
    if sel.size == 0 or sel.min() < 0 or sel.max() >= t:
        raise ShardError(f"frame selection {sel.tolist()} outside 0..{t - 1}", shard=shard, key=key)
    masks = list(header.get("masks", []))
    depth_codec = depth_codec_of(header, shard, key)
    fields = {"rgb": "jpg", "depth": DEPTH_EXTENSIONS[depth_codec], **{m: "png" for m in masks}}
    payloads = {name: [_frame_field(sample, name, i, ext) for i in range(t)]  # all must exist
                for name, ext in fields.items()}
    meta = dict(header["meta"])
    per_frame = set(PER_FRAME_META) | set(meta.get("per_frame_keys", []))
    for k in per_frame:
        if isinstance(meta.get(k), list) and len(meta[k]) == t:
            meta[k] = [meta[k][i] for i in sel]
    try:
        intr = np.asarray(header["intrinsics"], dtype=np.float32)[sel]
        extr = header["extrinsics"]
        extr = None if extr is None else np.asarray(extr, dtype=np.float32)[sel]
    except (ValueError, IndexError, TypeError) as exc:
        raise ShardError(f"camera arrays in meta.json are malformed ({exc})", shard=shard, key=key,
                         field="intrinsics/extrinsics") from exc
    clip: dict[str, Any] = {"intrinsics": intr, "extrinsics": extr}
    if lazy:
        for name in fields:
            clip[name] = [payloads[name][i] for i in sel]
        clip["depth_codec"] = depth_codec  # how to decode clip["depth"]
    else:
        size = _stored_size(meta)

        def frames_of(name: str, decode: Callable[[bytes, tuple[str, str, str]], np.ndarray]
                      ) -> np.ndarray:
            out = []
            for i in sel:
                arr = decode(payloads[name][i], (shard, key, name))
                if size is not None and tuple(arr.shape[:2]) != size:
                    raise ShardError(f"frame {int(i)} is {arr.shape[1]}x{arr.shape[0]} (WxH) but "
                                     f"the clip's image size is {size[1]}x{size[0]} "
                                     "(meta.image_size); re-create the shard", shard=shard,
                                     key=key, field=name)
                out.append(arr)
            return np.stack(out)

        clip["rgb"] = frames_of("rgb", lambda d, w: _decode_image(d, w, "RGB"))
        clip["depth"] = frames_of("depth", lambda d, w: decode_depth(d, w, depth_codec, size))
        for m in masks:
            clip[m] = frames_of(m, lambda d, w: _decode_image(d, w).astype(bool))
    clip["meta"] = meta
    clip["__key__"] = key
    clip["__shard__"] = shard
    if validate:
        try:
            if lazy:  # cameras and meta only; shapes from the stored image size
                size = tuple(int(v) for v in meta.get("image_size", (0, 0)))
                validate_clip({
                    "rgb": np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (len(sel), *size, 3)),
                    "depth": np.broadcast_to(np.zeros((1, 1, 1), np.float32), (len(sel), *size)),
                    "intrinsics": intr, "extrinsics": extr, "meta": meta}, check_values=False)
            else:
                validate_clip(clip)
        except ClipError as exc:
            raise ShardError(str(exc), shard=shard, key=key, field=exc.field) from exc
    return clip


def _stored_size(meta: dict) -> tuple[int, int] | None:
    """``meta["image_size"]`` as ``(H, W)``, or None when absent (validation then reports it)."""
    size = meta.get("image_size")
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        return None
    return h, w


def read_clips(path: PathLike | Sequence[PathLike], validate: bool = True,
               verify: bool = True, remote: RemoteOptions | None = None) -> Iterator[dict]:
    """Clip dicts (INTERFACES.md) from a shard, a corpus folder, folders of corpora or a brace
    pattern, in stored order.

    Each clip also carries ``__key__`` and ``__shard__``. ``verify`` checks each shard's sha256
    against its ``index.json`` before reading; ``validate`` checks each clip against the schema.
    Errors name the shard, sample and field.
    """
    for shard, digest in resolve_shards(path, remote):
        size = remote_shard_bytes(shard, remote) if _remote.is_url(os.fspath(shard)) else None
        for sample in iter_raw_samples(shard, digest if verify else None, size=size,
                                       remote=remote):
            yield decode_sample(sample, validate=validate)


def _concat_sequence(clips: list[dict]) -> dict:
    """One sequence of overlapping or adjacent clips, frames sorted and de-duplicated."""
    idx = np.concatenate([np.asarray(c["meta"]["frame_indices"]) for c in clips])
    _, first = np.unique(idx, return_index=True)  # first occurrence of each frame, sorted
    out: dict[str, Any] = {}
    for field in ("rgb", "depth", "intrinsics"):
        out[field] = np.concatenate([c[field] for c in clips])[first]
    has_pose = clips[0]["extrinsics"] is not None
    out["extrinsics"] = np.concatenate([c["extrinsics"] for c in clips])[first] if has_pose else None
    for m in MASK_FIELDS:
        if all(c.get(m) is not None for c in clips):
            out[m] = np.concatenate([c[m] for c in clips])[first]
    meta = dict(clips[0]["meta"])
    per_frame = set(PER_FRAME_META) | set(meta.get("per_frame_keys", []))
    for k in per_frame:
        if all(isinstance(c["meta"].get(k), list) and len(c["meta"][k]) == len(c["depth"])
               for c in clips):
            merged = [v for c in clips for v in c["meta"][k]]
            meta[k] = [merged[i] for i in first]
    meta["clip_keys"] = [c["__key__"] for c in clips]
    out["meta"] = meta
    out["__key__"] = clips[0]["__key__"]
    return out


def read_sequences(path: PathLike | Sequence[PathLike], validate: bool = True,
                   verify: bool = True) -> Iterator[dict]:
    """Whole sequences: the clips of each sequence concatenated in frame order (same keys as a
    clip; overlapping frames kept once; ``meta["clip_keys"]`` lists the clips used).

    Clips of one sequence must be stored consecutively, as :func:`write_corpus` does for
    converters that emit sequences in order; a sequence that reappears later raises.
    """
    done: set[tuple[str, str]] = set()
    group: list[dict] = []
    for clip in read_clips(path, validate=validate, verify=verify):
        ident = (clip["meta"]["corpus"], clip["meta"]["sequence"])
        if group and ident != (group[0]["meta"]["corpus"], group[0]["meta"]["sequence"]):
            done.add((group[0]["meta"]["corpus"], group[0]["meta"]["sequence"]))
            yield _concat_sequence(group)
            group = []
        if ident in done:
            raise ShardError(f"sequence {ident[1]!r} of corpus {ident[0]!r} reappears after other "
                             "sequences; its clips must be stored consecutively",
                             shard=clip["__shard__"], key=clip["__key__"])
        group.append(clip)
    if group:
        yield _concat_sequence(group)
