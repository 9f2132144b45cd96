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

import itertools
from collections.abc import Callable, Iterator
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
from gemdepth.data.converters._common import SKIP_SINK, ConverterError, FrameError

__all__ = ["CONVERTERS", "Converter", "ConverterError", "FrameError", "run_converter"]


@dataclass(frozen=True)
class Converter:
    """A registered corpus converter."""

    name: str
    iter_clips: Callable[..., Iterator[dict]]
    role: str  # "pose-annotated training", "pose-free training" or "evaluation"
    summary: str


def _entry(module: Any, role: str) -> Converter:
    doc = (module.__doc__ or "").strip().splitlines()[0]
    return Converter(name=module.CORPUS, iter_clips=module.iter_clips, role=role, summary=doc)


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


def run_converter(
    format: str,  # noqa: A002 - the interface's name
    root: str | Path,
    out: str | Path,
    clip_length: int = 32,
    stride: int = 1,
    *,
    clips_per_shard: int = 8,
    progress: bool = True,
    **options: Any,
) -> dict:
    """Convert the corpus at ``root`` (format ``format``) into shards in ``out``; return the index.

    ``options`` go to the converter's ``iter_clips`` (e.g. ``camera="fr1"`` for ``tum``).
    The corpus name written is the clips' ``meta["corpus"]`` (the format name, except for
    ``frames`` whose ``corpus=`` option names it). The returned index (see
    :func:`~gemdepth.data.shards.write_corpus`) gains ``"skipped"``: frames skipped per reason.
    """
    if format not in CONVERTERS:
        raise ConverterError(f"unknown format {format!r}; choose one of {sorted(CONVERTERS)}")
    if clip_length < 1 or stride < 1:
        raise ValueError(f"clip_length and stride must be >= 1, got {clip_length}, {stride}")
    from gemdepth.data.shards import write_corpus

    conv = CONVERTERS[format]
    try:
        clips = conv.iter_clips(Path(root), clip_length, stride, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            import inspect

            accepted = [p for p in inspect.signature(conv.iter_clips).parameters
                        if p not in ("root", "clip_length", "stride")]
            raise ConverterError(f"{format}: {exc}; options it accepts: {accepted}") from exc
        raise
    skipped: dict[str, int] = {}
    token = SKIP_SINK.set(skipped)
    try:
        first = next(clips, None)
        if first is None:
            raise ConverterError(f"{format}: no clip could be made from {root} (every frame was "
                                 "skipped or the sequences are empty; see the log)")
        corpus = first["meta"]["corpus"]
        index = write_corpus(itertools.chain([first], clips), out, corpus,
                             clips_per_shard=clips_per_shard, progress=progress)
    finally:
        SKIP_SINK.reset(token)
    index = dict(index)
    index["skipped"] = skipped
    return index
