"""``gemdepth data``: make (``synth``), convert (``convert``) and check (``inspect``) shards."""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "colourise_depth", "contact_sheet"]

DEPTH_CODECS = ("png16", "raw16", "zlib16")  # gemdepth.data.codecs.DEPTH_CODECS (light import)
_DEPTH_CODEC_HELP = ("how depth frames are stored (same values): png16 (default, 16-bit PNG), "
                     "raw16 (uncompressed: ~8x larger, fastest training loader) or zlib16 "
                     "(deflated raw: about a PNG's size, ~3x faster to decode)")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 168x224 (HxW), got {text!r}")
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size {text} is too small (at least 8x8)")
    return h, w


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"options look like key=value, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def _parser(formats: bool = False) -> argparse.ArgumentParser:
    """The ``gemdepth data`` parser; ``formats`` adds the converter list (and its options) to
    ``convert --help`` (it imports every converter, so only when convert is asked for)."""
    parser = argparse.ArgumentParser(prog="gemdepth data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="render the seeded synthetic corpus into shards")
    synth.add_argument("--out", type=Path, default=Path("shards/synthetic"))
    synth.add_argument("--sequences", type=int, default=16)
    synth.add_argument("--frames", type=int, default=32, help="frames per sequence")
    synth.add_argument("--clip-length", type=int, default=32, help="frames per stored clip")
    synth.add_argument("--size", type=_size, default=(168, 224), help="HxW, e.g. 168x224")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--pose-free", action="store_true",
                       help="the stage-2 flavour: same renders, has_pose false, no extrinsics")
    synth.add_argument("--kind", choices=("mixed", "room", "open"), default="mixed")
    synth.add_argument("--camera", choices=("smooth", "fast", "static"), default="smooth",
                       help="camera motion: smooth (default), fast (strong rotation, fast motion) "
                            "or static (fixed camera, the control)")
    synth.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                       help="rendering processes")
    synth.add_argument("--clips-per-shard", type=int, default=8)
    synth.add_argument("--depth-codec", choices=DEPTH_CODECS, default="png16",
                       help=_DEPTH_CODEC_HELP)
    synth.add_argument("--resume", action="store_true",
                       help="finish an interrupted run into --out: keep its shards that are "
                            "written and verified, render only the rest (same arguments needed)")

    inspect = sub.add_parser("inspect", help="validate shards, print statistics, draw one clip")
    inspect.add_argument("path", help="a shard, a corpus folder, a folder of corpora or a pattern")
    inspect.add_argument("--out", type=Path, default=None,
                         help="contact-sheet PNG (default: <first corpus>_contact.png here)")
    inspect.add_argument("--no-verify", action="store_true", help="skip sha256 checks")
    inspect.add_argument("--frames", type=int, default=8, help="frames on the contact sheet")
    inspect.add_argument("--check", type=_count, default=2, metavar="N",
                         help="geometry check (depth reprojected with the stored poses) on the "
                              "first N clips of every pose-annotated metric corpus; 0: off")
    inspect.add_argument("--check-gap", type=_positive, default=1, metavar="G",
                         help="frame gap of the checked pairs (larger shows convention errors "
                              "on slow cameras; capped at clip length - 1)")
    inspect.add_argument("--strict", action="store_true",
                         help="exit 1 when a checked clip fails the geometry check")

    epilog = None
    if formats:
        from gemdepth.data.converters import describe_formats

        epilog = describe_formats()
    convert = sub.add_parser("convert", help="convert a published corpus layout into shards",
                             description="Convert a corpus in its published layout into "
                                         "WebDataset shards plus index.json (see "
                                         "shards/README.md).",
                             epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    convert.add_argument("format", help="converter name (listed below with their options), "
                                        "e.g. tum, sintel, vkitti2")
    convert.add_argument("root", type=Path, help="the corpus in its published layout")
    convert.add_argument("out", type=Path, help="output folder for the shards and index.json")
    convert.add_argument("--clip-length", type=int, default=32, help="frames per stored clip")
    convert.add_argument("--stride", type=int, default=1, help="keep every S-th source frame")
    convert.add_argument("--clips-per-shard", type=int, default=8, help="clips per .tar shard")
    convert.add_argument("--depth-codec", choices=DEPTH_CODECS, default="png16",
                         help=_DEPTH_CODEC_HELP)
    convert.add_argument("--option", "-o", type=_option, action="append", default=[],
                         help="converter option key=value (repeatable; each format's options "
                              "are listed below)")
    convert.add_argument("--resume", action="store_true",
                         help="finish an interrupted conversion into OUT: shards already "
                              "written and verified are kept and their clips are not loaded "
                              "again (same FORMAT, ROOT, clip length, stride and options)")
    return parser


# --------------------------------------------------------------------------- synth
def _synth(args: argparse.Namespace) -> int:
    from gemdepth.data.synthetic import SynthConfig, make_synthetic_corpus

    if args.frames < args.clip_length:
        print(f"gemdepth data synth: --frames ({args.frames}) must be >= --clip-length "
              f"({args.clip_length})", file=sys.stderr)
        return 2
    command = _synth_command(args)
    try:
        index = make_synthetic_corpus(
            args.out, sequences=args.sequences, frames=args.frames, clip_length=args.clip_length,
            size=args.size, seed=args.seed, pose_free=args.pose_free, workers=args.workers,
            clips_per_shard=args.clips_per_shard, config=SynthConfig(kind=args.kind, camera=args.camera),
            progress=True, resume=args.resume, resume_hint=command + " --resume",
            depth_codec=args.depth_codec)
    except KeyboardInterrupt:
        print(f"gemdepth data synth: interrupted; {args.out} is incomplete and refused by readers "
              f"until finished with `{command} --resume`", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # ShardError/ClipError are ValueErrors
        print(f"gemdepth data synth: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {index['clips']} clips / {index['frames']} frames of corpus {index['corpus']} "
          f"in {len(index['shards'])} shards to {args.out}")
    return 0


def _synth_command(args: argparse.Namespace) -> str:
    """The ``gemdepth data synth`` command line of these arguments (without --resume)."""
    import shlex

    parts = ["gemdepth", "data", "synth", "--out", str(args.out), "--sequences",
             str(args.sequences), "--frames", str(args.frames), "--clip-length",
             str(args.clip_length), "--size", f"{args.size[0]}x{args.size[1]}", "--seed",
             str(args.seed), "--kind", args.kind, "--clips-per-shard", str(args.clips_per_shard)]
    if args.pose_free:
        parts.append("--pose-free")
    if args.camera != "smooth":
        parts += ["--camera", args.camera]
    if args.depth_codec != "png16":
        parts += ["--depth-codec", args.depth_codec]
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------- inspect
# Turbo colour map as a 6th-degree polynomial fit (A. Mikhailov, Google, 2019, Apache-2.0
# fit coefficients): avoids matplotlib, which is not a runtime dependency.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def colourise_depth(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` of a depth map, coloured by normalised disparity (near = red).

    Invalid pixels (depth 0 or ``~valid``) are black.
    """
    ok = depth > 0 if valid is None else valid & (depth > 0)
    disp = np.where(ok, 1.0 / np.maximum(depth, 1e-6), 0.0)
    if ok.any():
        lo, hi = np.percentile(disp[ok], [1, 99])
        disp = np.clip((disp - lo) / max(hi - lo, 1e-12), 0, 1)
    powers = np.stack([disp ** k for k in range(6)], -1)
    rgb = np.clip(powers @ _TURBO.T, 0, 1)
    rgb[~ok] = 0
    return (rgb * 255 + 0.5).astype(np.uint8)


def contact_sheet(clip: dict, frames: int = 8) -> np.ndarray:
    """An image of up to ``frames`` evenly spaced frames: RGB above colourised depth."""
    t = clip["rgb"].shape[0]
    pick = np.unique(np.linspace(0, t - 1, min(frames, t)).round().astype(int))
    depth = clip["depth"][pick]
    if clip["meta"]["depth_kind"] == "relative-disparity":
        depth = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-12), 0.0)
    top = np.concatenate(list(clip["rgb"][pick]), axis=1)
    valid = clip["valid"][pick] if clip.get("valid") is not None else None
    bottom = np.concatenate(list(colourise_depth(depth, valid)), axis=1)
    return np.concatenate([top, bottom], axis=0)


class _Stats:
    """Running per-corpus statistics of clips."""

    def __init__(self) -> None:
        self.clips = 0
        self.frames = 0
        self.sequences: set[str] = set()
        self.sizes: set[tuple[int, int]] = set()
        self.kinds: set[str] = set()
        self.poses: set[bool] = set()
        self.lo = {k: np.inf for k in ("depth", "fx", "step", "sky", "valid")}
        self.hi = {k: -np.inf for k in self.lo}
        self.checks: list[str] = []  # format_report paragraphs of the geometry check
        self.checked = 0
        self.failed = 0
        self.uncheckable = 0
        self.failed_px = [0, 0, 0, 0]  # failed clips: inconsistent, compared px; bad, all pairs

    def wants_check(self, clip: dict, limit: int) -> bool:
        """Whether this clip is among the first ``limit`` checkable ones (poses, metric depth)."""
        return (self.checked + self.uncheckable < limit and clip["extrinsics"] is not None
                and clip["meta"]["depth_kind"] == "metric")

    def check(self, clip: dict, gap: int) -> None:
        """Run the geometry check on a clip and keep its report."""
        from gemdepth.data.consistency import check_clip, format_report

        key = clip.get("__key__") or clip["meta"]["sequence"]
        try:
            result = check_clip(clip, gap=min(gap, clip["depth"].shape[0] - 1))
        except ValueError as exc:  # e.g. a one-frame clip has no pair to compare
            self.uncheckable += 1
            self.checks.append(f"{key}: not checked ({exc})")
            return
        self.checked += 1
        self.failed += not result["passed"]
        if not result["passed"]:
            self.failed_px[0] += result["inconsistent"]
            self.failed_px[1] += result["compared"]
            self.failed_px[2] += sum(not p["passed"] for p in result["pairs"])
            self.failed_px[3] += len(result["pairs"])
        self.checks.append(format_report(result, key))

    def _range(self, key: str, values: np.ndarray) -> None:
        if values.size:
            self.lo[key] = min(self.lo[key], float(values.min()))
            self.hi[key] = max(self.hi[key], float(values.max()))

    def add(self, clip: dict) -> None:
        meta = clip["meta"]
        self.clips += 1
        self.frames += clip["rgb"].shape[0]
        self.sequences.add(meta["sequence"])
        self.sizes.add(tuple(clip["rgb"].shape[1:3]))
        self.kinds.add(meta["depth_kind"])
        self.poses.add(bool(meta["has_pose"]))
        depth = clip["depth"]
        self._range("depth", depth[depth > 0])
        self._range("valid", np.array([(depth > 0).mean()]))
        self._range("fx", clip["intrinsics"][:, 0, 0])
        if clip.get("sky") is not None:
            self._range("sky", np.array([clip["sky"].mean()]))
        if clip["extrinsics"] is not None and len(clip["extrinsics"]) > 1:
            from gemdepth.geometry import camera_centres
            import torch

            centres = camera_centres(torch.from_numpy(clip["extrinsics"]).double()).numpy()
            self._range("step", np.linalg.norm(np.diff(centres, axis=0), axis=-1))

    def geometry(self) -> str:
        """The geometry-check verdict line of this corpus ("" when nothing was checkable)."""
        if not self.checked and not self.uncheckable:
            return ""
        verdict = "PASS" if not self.failed else "FAIL"
        extra = f", {self.uncheckable} not checkable" if self.uncheckable else ""
        return (f"  geometry check: {verdict}, {self.checked - self.failed}/{self.checked} clips "
                f"consistent{extra}")

    def report(self, name: str) -> str:
        def rng(key: str, fmt: str = ".3g") -> str:
            if self.lo[key] == np.inf:
                return "n/a"
            return f"{self.lo[key]:{fmt}} .. {self.hi[key]:{fmt}}"

        sizes = ", ".join(f"{h}x{w}" for h, w in sorted(self.sizes))
        return "\n".join([
            f"corpus {name}: {self.clips} clips, {self.frames} frames, "
            f"{len(self.sequences)} sequences, sizes {sizes}",
            f"  depth kind {'/'.join(sorted(self.kinds))}, has_pose {sorted(self.poses)}",
            f"  depth (valid px) {rng('depth')}, valid fraction/clip {rng('valid', '.2f')}, "
            f"sky fraction/clip {rng('sky', '.2f')}",
            f"  fx {rng('fx', '.1f')} px, camera step/frame {rng('step')} (pose units)",
        ] + [line for line in [self.geometry()] if line])


def _failure_verdict(failed: int, inconsistent: int, compared: int, bad_pairs: int,
                     pairs: int) -> str:
    """What the failed geometry checks mean, with the share of their pixels that disagree.

    The check assumes a static world, so moving content (people, vehicles) fails it just as
    wrong poses, intrinsics or depth units do; the pixel share alone does not tell them apart
    (a person filling half the view disagrees as much as a small pose error), a static
    stretch of the same sequence does.
    """
    frac = inconsistent / max(compared, 1)
    return (f", {failed} FAILED: {frac:.1%} of their compared pixels are inconsistent "
            f"({inconsistent} of {compared}; {bad_pairs} of {pairs} frame pairs fail). Moving "
            "content (people, vehicles: a dynamic scene) can cause this, as can wrong poses, "
            "intrinsics or depth units; if a static stretch of the same sequence passes with "
            "the same poses, the poses are fine")


def _inspect(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm.auto import tqdm

    from gemdepth.data.schema import ClipError
    from gemdepth.data.shards import ShardError, decode_sample, iter_raw_samples, resolve_shards

    try:
        shards = resolve_shards(args.path)
    except (FileNotFoundError, ShardError, OSError) as exc:
        print(f"gemdepth data inspect: {exc}", file=sys.stderr)
        return 1
    stats: dict[str, _Stats] = defaultdict(_Stats)
    errors: list[str] = []
    sheet_clip = None
    for shard, digest in tqdm(shards, desc="inspecting", unit="shard"):
        try:
            for raw in iter_raw_samples(shard, None if args.no_verify else digest):
                try:
                    clip = decode_sample(raw, validate=True)
                except ShardError as exc:
                    errors.append(str(exc))
                    continue
                except (ClipError, ValueError, TypeError, KeyError) as exc:  # a malformed sample
                    errors.append(f"shard {shard}, sample {raw.get('__key__')}: {exc!r}")
                    continue
                corpus = stats[clip["meta"]["corpus"]]
                corpus.add(clip)
                if corpus.wants_check(clip, args.check):
                    corpus.check(clip, args.check_gap)
                if sheet_clip is None:
                    sheet_clip = clip
        except ShardError as exc:
            errors.append(str(exc))
    for name in sorted(stats):
        if stats[name].checks:
            print(f"geometry check of {name} (depth warped with the stored poses, gap "
                  f"{args.check_gap}):")
            print("\n".join("  " + line.replace("\n", "\n  ") for line in stats[name].checks))
    for name in sorted(stats):
        print(stats[name].report(name))
    if sheet_clip is not None:
        out = args.out or Path(f"{sheet_clip['meta']['corpus']}_contact.png")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(contact_sheet(sheet_clip, args.frames)).save(out)
            print(f"contact sheet of {sheet_clip['__key__']}: {out}")
        except (OSError, ValueError) as exc:  # unwritable folder, full disk, unknown extension
            errors.append(f"contact sheet {out}: not written ({exc})")
    checked = sum(s.checked for s in stats.values())
    failed = sum(s.failed for s in stats.values())
    if checked:
        print(f"geometry check: {checked - failed}/{checked} checked clips consistent"
              + (_failure_verdict(failed, *np.sum([s.failed_px for s in stats.values()], 0))
                 if failed else ""))
    if errors:
        print(f"{len(errors)} problem(s):", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"all {sum(s.clips for s in stats.values())} clips valid")
    if failed and args.strict:
        print(f"gemdepth data inspect: {failed} clip(s) failed the geometry check (--strict)",
              file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- convert
def _convert(args: argparse.Namespace) -> int:
    from gemdepth.data import converters  # imported only when needed

    options = dict(args.option)
    kwargs = {"resume": True} if args.resume else {}
    if args.depth_codec != "png16":
        kwargs["depth_codec"] = args.depth_codec
    try:
        index = converters.run_converter(args.format, args.root, args.out,
                                         clip_length=args.clip_length, stride=args.stride,
                                         clips_per_shard=args.clips_per_shard, **kwargs, **options)
    except KeyboardInterrupt:
        command = converters.convert_command(args.format, args.root, args.out, args.clip_length,
                                             args.stride, args.clips_per_shard, options, True,
                                             args.depth_codec)
        print(f"gemdepth data convert: interrupted; {args.out} is incomplete and refused by "
              f"readers until finished with `{command}`", file=sys.stderr)
        return 130
    except (ValueError, KeyError, TypeError, OSError, converters.FrameError) as exc:
        # ConverterError, ShardError, ClipError are ValueErrors; OSError: unreadable input,
        # unwritable output or a full disk. All name their file.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, OSError) and getattr(exc, "filename", None):
            message = f"{exc.filename}: {exc.strerror or exc}"
        print(f"gemdepth data convert: {message}", file=sys.stderr)
        return 1
    print(f"wrote {index['clips']} clips / {index['frames']} frames of corpus {index['corpus']} "
          f"in {len(index['shards'])} shards to {args.out}")
    skipped = index.get("skipped") or {}
    if skipped:
        print(f"skipped {sum(skipped.values())} frame(s): "
              + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
    zeroed = index.get("zeroed_depth") or {}
    if zeroed:
        print(f"set {zeroed.get('non-finite pixels', 0)} non-finite and "
              f"{zeroed.get('negative pixels', 0)} negative depth pixels to 0 (invalid) in "
              f"{zeroed.get('frames', 0)} frame(s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gemdepth data``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(formats=bool(argv) and argv[0] == "convert").parse_args(argv)
    if args.command == "synth":
        return _synth(args)
    if args.command == "inspect":
        return _inspect(args)
    return _convert(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
