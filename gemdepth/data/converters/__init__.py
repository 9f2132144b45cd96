"""Converters from the paper's corpora (in their published layouts) to gemdepth shards.

Each corpus has one module exposing ``iter_clips(root, clip_length, stride, **options)``,
which maps the corpus's layout, depth encoding and pose convention onto the clip schema
(metres with 0 = invalid, world-to-camera OpenCV poses, intrinsics in pixels of the stored
image, sky as a mask). It validates ROOT when called (a :class:`ConverterError` naming what
is missing) and returns a lazy iterator of clip dicts; unreadable frames are skipped,
counted and logged. :func:`run_converter` writes those clips as shards with
:func:`gemdepth.data.shards.write_corpus`.

Clips: every ``stride``-th frame of a sequence, cut into consecutive, non-overlapping clips
of ``clip_length`` frames (the last one may be shorter, so evaluation sees every frame).
"""

from __future__ import annotations

import inspect
import itertools
import json
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemdepth.data.converters import (
    bonn,
    dynamic_replica,
    frames,
    irs,
    kitti,
    mvs_synth,
    pointodyssey,
    scannet,
    sintel,
    tartanair,
    tum,
    vkitti2,
)
from gemdepth.data.converters._common import (
    RESUME_KEYS,
    SKIP_SINK,
    ZEROED_SINK,
    ConverterError,
    FrameError,
)

__all__ = ["CONVERTERS", "Converter", "ConverterError", "FrameError", "run_converter",
           "describe_formats", "convert_command"]


@dataclass(frozen=True)
class Converter:
    """A registered corpus converter; ``options`` are its ``-o key=value`` options as
    ``(name, default, meaning)``."""

    name: str
    iter_clips: Callable[..., Iterator[dict]]
    role: str  # "pose-annotated training", "pose-free training" or "evaluation"
    summary: str
    options: tuple[tuple[str, Any, str], ...] = ()


def _entry(module: Any, role: str) -> Converter:
    doc = (module.__doc__ or "").strip().splitlines()[0]
    params = [p for p in inspect.signature(module.iter_clips).parameters.values()
              if p.kind == p.KEYWORD_ONLY]
    helps = getattr(module, "OPTIONS", {})
    options = tuple((p.name, p.default, helps.get(p.name, "")) for p in params)
    return Converter(name=module.CORPUS, iter_clips=module.iter_clips, role=role, summary=doc,
                     options=options)


#: Converters by format name (the names of ``gemdepth data convert FORMAT``).
CONVERTERS: dict[str, Converter] = {
    c.name: c
    for c in (
        _entry(vkitti2, "pose-annotated training"),
        _entry(tartanair, "pose-annotated training"),
        _entry(pointodyssey, "pose-annotated training"),
        _entry(mvs_synth, "pose-annotated training"),
        _entry(dynamic_replica, "pose-annotated training"),
        _entry(irs, "pose-free training"),
        _entry(frames, "pose-free training"),
        _entry(sintel, "evaluation"),
        _entry(kitti, "evaluation"),
        _entry(scannet, "evaluation"),
        _entry(bonn, "evaluation"),
        _entry(tum, "evaluation"),
    )
}


def describe_formats() -> str:
    """The formats of ``gemdepth data convert`` with their role and ``-o`` options (defaults
    and meaning), as printed by ``gemdepth data convert --help``."""
    lines = ["formats (FORMAT) and their options (-o key=value, repeatable):"]
    for conv in CONVERTERS.values():
        lines.append(f"  {conv.name:<16} {conv.role}: {conv.summary}")
        if not conv.options:
            lines.append("      (no options)")
        for name, default, meaning in conv.options:
            lines.append(f"      -o {name}=...  (default {_option_text(default)})  {meaning}")
    return "\n".join(lines)


def _option_text(value: Any) -> str:
    """An option value as typed on the command line (``-o key=<this>``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(_option_text(v) for v in value)
    return str(value)


def convert_command(format: str, root: str | Path, out: str | Path,  # noqa: A002
                    clip_length: int, stride: int, clips_per_shard: int,
                    options: Mapping[str, Any], resume: bool = False,
                    depth_codec: str = "png16") -> str:
    """The ``gemdepth data convert`` command line of a conversion (shell-quoted)."""
    parts = ["gemdepth", "data", "convert", format, str(root), str(out),
             "--clip-length", str(clip_length), "--stride", str(stride),
             "--clips-per-shard", str(clips_per_shard)]
    for key, value in options.items():
        parts += ["-o", f"{key}={_option_text(value)}"]
    if depth_codec != "png16":
        parts += ["--depth-codec", depth_codec]
    if resume:
        parts.append("--resume")
    return " ".join(shlex.quote(p) for p in parts)


def run_converter(
    format: str,  # noqa: A002 - the interface's name
    root: str | Path,
    out: str | Path,
    clip_length: int = 32,
    stride: int = 1,
    *,
    clips_per_shard: int = 8,
    progress: bool = True,
    resume: bool = False,
    depth_codec: str = "png16",
    **options: Any,
) -> dict:
    """Convert the corpus at ``root`` (format ``format``) into shards in ``out``; return the index.

    ``options`` go to the converter's ``iter_clips`` (e.g. ``camera="fr1"`` for ``tum``).
    The corpus name written is the clips' ``meta["corpus"]`` (the format name, except for
    ``frames`` whose ``corpus=`` option names it). ``resume=True`` finishes an interrupted
    conversion into ``out``: shards already written and verified are kept and their clips are
    not loaded again (the same format, root, clip length, stride and options are required).
    The index records the conversion (``source``) and the command that resumes it. The
    returned index (see :func:`~gemdepth.data.shards.write_corpus`) gains ``"skipped"``
    (frames skipped per reason) and ``"zeroed_depth"`` (non-finite/negative depth pixels set
    to 0, and the frames they were in); both are also logged.
    """
    if format not in CONVERTERS:
        raise ConverterError(f"unknown format {format!r}; choose one of {sorted(CONVERTERS)}")
    if clip_length < 1 or stride < 1:
        raise ValueError(f"clip_length and stride must be >= 1, got {clip_length}, {stride}")
    from gemdepth.data.shards import write_corpus

    conv = CONVERTERS[format]
    accepted = [name for name, _, _ in conv.options]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConverterError(f"{format}: unknown option(s) {unknown}; options it accepts: "
                             f"{accepted or 'none'} (see `gemdepth data convert --help`)")
    clips = conv.iter_clips(Path(root), clip_length, stride, **options)
    source = json.loads(json.dumps({
        "format": format, "root": str(Path(root).expanduser().resolve()),
        "clip_length": clip_length, "stride": stride, "options": dict(options)}, default=str))
    if depth_codec != "png16":  # the default leaves the recorded source as it always was
        source["depth_codec"] = depth_codec
    hint = convert_command(format, root, out, clip_length, stride, clips_per_shard, options,
                           resume=True, depth_codec=depth_codec)
    skipped: dict[str, int] = {}
    zeroed: dict[str, int] = {}
    done: set[str] = set()
    tokens = [(SKIP_SINK, SKIP_SINK.set(skipped)), (ZEROED_SINK, ZEROED_SINK.set(zeroed)),
              (RESUME_KEYS, RESUME_KEYS.set(done if resume else None))]
    try:
        first = next(clips, None)  # the corpus name (built even when resuming: one clip)
        if first is None:
            raise ConverterError(_nothing_converted(format, root, skipped))
        index = write_corpus(itertools.chain([first], clips), out, first["meta"]["corpus"],
                             clips_per_shard=clips_per_shard, progress=progress,
                             resume=resume, source=source, resume_hint=hint, known_keys=done,
                             depth_codec=depth_codec)
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
    index = dict(index)
    index["skipped"] = skipped
    index["zeroed_depth"] = zeroed
    return index


def _nothing_converted(format: str, root: str | Path,  # noqa: A002
                       skipped: Mapping[str, int]) -> str:
    """Why a conversion produced no clip, saying exactly what was found."""
    if skipped:
        return (f"{format}: no clip could be made from {root}: every frame was skipped "
                f"({sum(skipped.values())} frame(s): "
                + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
                + "; each one is logged above with its file)")
    return (f"{format}: no clip could be made from {root}: its sequences list no frames "
            "(check the layout in `gemdepth data convert --help` and the converter's docs)")

