"""``gemdepth demo`` (``make demo``): the whole project on a CPU in about ten minutes.

1. renders the embedded synthetic corpus: training sequences with poses, a pose-free flavour,
   held-out evaluation sequences (another seed) and one video;
2. trains a small GemDepth-VDA from scratch, stage 1 (pose + depth supervision) then stage 2
   (a new run from the stage-1 weights, GEM frozen, pose-free clips added), through the same
   LightningCLI and configs as real training (``configs/quickstart_stage{1,2}.yaml``);
3. evaluates the untrained model, the stage-1 and the stage-2 model on the held-out sequences
   with the windowed video inference and the paper's metrics (AbsRel, δ1, TAE);
4. runs ``gemdepth infer``'s pipeline on the rendered video (depth, cameras, point cloud);
5. prints a before/after table and the paths it wrote; ``metrics.json`` and ``metrics.md`` hold
   the table too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
METRIC_NAMES = ("AbsRel", "Delta1", "TAE")


@dataclass
class DemoSettings:
    """Sizes of a demo run (the defaults fit ~10 minutes on 2 CPU cores)."""

    out: Path = Path("outputs/demo")
    train_sequences: int = 64
    posefree_sequences: int = 24
    eval_sequences: int = 6
    frames: int = 32  # frames per rendered sequence
    clip_length: int = 8  # frames per stored clip = training clip = inference window
    size: tuple[int, int] = (112, 112)
    video_frames: int = 64
    stage1_steps: int = 600
    stage2_steps: int = 150
    seed: int = 0
    workers: int = 2
    max_eval_depth: float = 80.0  # metres scored (the KITTI protocol's cap; open scenes reach 150 m)

    @property
    def window(self) -> tuple[int, int, int]:
        """(window, overlap, interp) of the windowed inference for the model's clip length."""
        from gemdepth.training.task import window_settings

        return window_settings(self.clip_length)


# --------------------------------------------------------------------------- corpus
def render_corpora(s: DemoSettings) -> dict[str, Path]:
    """Training, pose-free, held-out shards and a video, all seeded (different seeds per split)."""
    from gemdepth.data.synthetic import SynthConfig, make_synthetic_corpus, render_sequence

    shards = s.out / "shards"
    common = dict(frames=s.frames, clip_length=s.clip_length, size=s.size, workers=s.workers)
    paths = {
        "synthetic": shards / "synthetic",
        "synthetic_posefree": shards / "synthetic_posefree",
        "synthetic_val": shards / "synthetic_val",
    }
    print(f"[1/5] rendering the synthetic corpus into {shards}", flush=True)
    make_synthetic_corpus(paths["synthetic"], sequences=s.train_sequences, seed=s.seed, **common)
    make_synthetic_corpus(paths["synthetic_posefree"], sequences=s.posefree_sequences, seed=s.seed + 1,
                          pose_free=True, **common)
    make_synthetic_corpus(paths["synthetic_val"], sequences=s.eval_sequences, seed=s.seed + 1000,
                          clips_per_shard=4, **common)
    video = s.out / "video" / "synthetic_scene.mp4"
    seq = render_sequence(np.random.SeedSequence([s.seed + 2000, 0]),
                          SynthConfig(height=s.size[0], width=s.size[1], frames=s.video_frames))
    write_video(seq["rgb"], video)
    paths["video"] = video
    return paths


def write_video(frames: np.ndarray, path: Path, fps: int = 12) -> None:
    """Frames ``(T, H, W, 3)`` uint8 → an H.264 (or MPEG-4) file, written atomically."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- training
def _stage_args(stage: int, s: DemoSettings, paths: dict[str, Path], init: Path | None) -> list[str]:
    """CLI arguments: the quickstart config plus an override file with this run's paths and sizes."""
    import yaml

    base = yaml.safe_load((CONFIG_DIR / f"quickstart_stage{stage}.yaml").read_text())
    run = s.out / f"stage{stage}"
    steps = s.stage1_steps if stage == 1 else s.stage2_steps
    sources = {"synthetic": {"path": str(paths["synthetic"])}}
    if stage == 2:
        sources["synthetic_posefree"] = {"path": str(paths["synthetic_posefree"])}
    val = {"synthetic_val": {"path": str(paths["synthetic_val"]), "sky": "invalid"}}
    side = min(s.size)
    model = base["model"]["model"]
    model["head"]["num_frames"] = s.clip_length
    callbacks = base["trainer"]["callbacks"]
    for cb in callbacks:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"].update(dirpath=str(run / "checkpoints"), every_n_train_steps=max(1, steps // 2))
    overrides = {
        "seed_everything": s.seed,
        "trainer": {
            "max_steps": steps, "val_check_interval": steps, "limit_val_batches": 2,
            "default_root_dir": str(run), "callbacks": callbacks,
            "logger": {"class_path": base["trainer"]["logger"]["class_path"],
                       "init_args": {"save_dir": str(run), "name": "tb"}},
        },
        "model": {"model": model, "init_weights": None if init is None else str(init)},
        "data": {
            "train_sources": sources, "val_sources": val, "test_sources": val,
            "clip_length": s.clip_length, "short_side": side,
            "sizes": [[side, side], [side * 3 // 4 // 14 * 14, max(s.size)]],
            "eval_size": [side, side],
        },
    }
    run.mkdir(parents=True, exist_ok=True)
    override = run / "demo_overrides.yaml"
    override.write_text(yaml.safe_dump(overrides, sort_keys=False))
    return ["fit", "-c", str(CONFIG_DIR / f"quickstart_stage{stage}.yaml"), "-c", str(override)]


def train_stage(stage: int, s: DemoSettings, paths: dict[str, Path], init: Path | None) -> Path:
    """One quickstart stage through the gemdepth CLI; returns its ``last.ckpt``."""
    from gemdepth.training.cli import run_lightning_cli

    what = "pose + depth supervision" if stage == 1 else "GEM frozen, pose-free clips added, no camera loss"
    steps = s.stage1_steps if stage == 1 else s.stage2_steps
    print(f"[{stage + 1}/5] training stage {stage} ({what}), {steps} steps", flush=True)
    code = run_lightning_cli(_stage_args(stage, s, paths, init))
    ckpt = s.out / f"stage{stage}" / "checkpoints" / "last.ckpt"
    if code != 0 or not ckpt.is_file():
        raise RuntimeError(f"stage {stage} training failed (exit code {code}); see the log above")
    return ckpt


# --------------------------------------------------------------------------- evaluation
def predict_sequence(model: Any, seq: dict, window: tuple[int, int, int]) -> tuple[Any, ...]:
    """``(pred, depth, valid, intrinsics, extrinsics)`` tensors of one whole synthetic sequence:
    the windowed inference's depth at the frames' short side (``window`` = size, overlap,
    cross-fade), and the ground truth with sky not scored. Shared by the demo and
    ``gemdepth experiment``'s held-out evaluation, so both score the same way."""
    import torch

    from gemdepth.inference import infer_video

    size, overlap, interp = window
    height, width = seq["rgb"].shape[1:3]
    with torch.inference_mode():
        results = list(infer_video(model, list(seq["rgb"]), input_size=min(height, width), window=size,
                                   overlap=overlap, interp=interp, device="cpu"))
    pred = torch.from_numpy(np.stack([r.depth for r in results])).float()
    depth = torch.from_numpy(seq["depth"]).float()
    valid = depth > 0
    if seq.get("sky") is not None:
        valid &= ~torch.from_numpy(seq["sky"])
    return (pred, depth, valid, torch.from_numpy(seq["intrinsics"]).float(),
            torch.from_numpy(seq["extrinsics"]).float())


def evaluate(model: Any, sequences: list[dict], s: DemoSettings, label: str) -> dict[str, float]:
    """AbsRel, δ1 and TAE of ``model`` on whole held-out sequences (windowed inference)."""
    from tqdm import tqdm

    from gemdepth.metrics import build_metrics

    metrics = build_metrics(list(METRIC_NAMES), max_depth=s.max_eval_depth)
    model.eval()
    for seq in tqdm(sequences, desc=f"evaluating {label}", unit="seq", dynamic_ncols=True):
        metrics.update(*predict_sequence(model, seq, s.window), name=seq["meta"]["sequence"])
    return {k: float(v) for k, v in metrics.compute().items()}


def untrained_model(stage1_ckpt: Path, seed: int) -> Any:
    """The stage-1 model exactly as training started it (same config, same seeded init)."""
    from lightning.pytorch import seed_everything

    from gemdepth.training import GemDepthTask
    from gemdepth.training.cli import embedded_config

    cfg = embedded_config(stage1_ckpt)
    if cfg is None:
        raise RuntimeError(f"{stage1_ckpt} embeds no config")
    import inspect

    accepted = set(inspect.signature(GemDepthTask.__init__).parameters) - {"self", "init_weights"}
    seed_everything(seed, verbose=False)
    model_args = {k: v for k, v in cfg["model"].items() if k in accepted}
    return GemDepthTask(**model_args, init_weights=None).model


# --------------------------------------------------------------------------- report
def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per model, columns AbsRel ↓, δ1 ↑, TAE ↓."""
    head = "| model | AbsRel ↓ | δ1 ↑ | TAE ↓ |\n|---|---:|---:|---:|"
    lines = [head]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['AbsRel']:.3f} | {m['Delta1']:.3f} | {m['TAE']:.3f} |")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(s: DemoSettings) -> dict[str, Any]:
    """The whole demo; returns the metrics table and the paths written."""
    import torch
    from lightning.pytorch import seed_everything

    from gemdepth.data import read_sequences
    from gemdepth.inference import InferenceOptions, OutputOptions, open_source, run_source
    from gemdepth.weights import load_model

    start = time.perf_counter()
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, s.workers)))
    s.out.mkdir(parents=True, exist_ok=True)
    paths = render_corpora(s)
    t_render = time.perf_counter() - start

    ckpt1 = train_stage(1, s, paths, None)
    ckpt2 = train_stage(2, s, paths, ckpt1)
    t_train = time.perf_counter() - start - t_render

    print("[4/5] evaluating on the held-out sequences", flush=True)
    sequences = list(read_sequences(paths["synthetic_val"]))
    rows = {
        "untrained": evaluate(untrained_model(ckpt1, s.seed), sequences, s, "untrained"),
        "stage 1": evaluate(load_model(ckpt1), sequences, s, "stage 1"),
        "stage 2 (final)": evaluate(load_model(ckpt2), sequences, s, "stage 2"),
    }

    print(f"[5/5] inference on the rendered video {paths['video']}", flush=True)
    window, overlap, interp = s.window
    seed_everything(s.seed, verbose=False)
    info = run_source(
        load_model(ckpt2), open_source(paths["video"]), s.out / "inference",
        InferenceOptions(input_size=min(s.size), window=window, overlap=overlap, interp=interp, device="cpu"),
        OutputOptions(ply_voxel=0.02),
    )
    infer_dir = s.out / "inference" / paths["video"].stem
    elapsed = time.perf_counter() - start

    table = format_table(rows)
    result = {
        "metrics": rows,
        "eval_sequences": len(sequences),
        "eval_frames": int(sum(len(q["rgb"]) for q in sequences)),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in s.__dict__.items()},
        "seconds": {"render": round(t_render, 1), "train": round(t_train, 1), "total": round(elapsed, 1)},
        "paths": {
            "shards": str(s.out / "shards"),
            "stage1_checkpoint": str(ckpt1),
            "stage2_checkpoint": str(ckpt2),
            "tensorboard": [str(s.out / "stage1" / "tb"), str(s.out / "stage2" / "tb")],
            "video": str(paths["video"]),
            "inference": str(infer_dir),
            "inference_files": sorted(str(infer_dir / f) for f in info.get("files", os.listdir(infer_dir))),
        },
    }
    _atomic_write(s.out / "metrics.json", json.dumps(result, indent=2) + "\n")
    md = (
        f"# gemdepth demo\n\nHeld-out synthetic sequences: {result['eval_sequences']} "
        f"({result['eval_frames']} frames, {s.size[0]}x{s.size[1]}), windowed inference "
        f"(window {window}, overlap {overlap}), depth scored up to {s.max_eval_depth:g} m. "
        f"TAE ×100 as the Video Depth Anything benchmark.\n\n"
        f"{table}\n\nWall time: {elapsed / 60:.1f} min (render {t_render:.0f} s, train {t_train:.0f} s).\n"
    )
    _atomic_write(s.out / "metrics.md", md)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a small or shared CPU, spinning threads
    # steal the cores the data worker and the other thread need (measured: 4x slower steps
    # under load). Must be set before torch loads OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="gemdepth demo", description=__doc__.split("\n\n")[0])
    d = DemoSettings()
    parser.add_argument("--out", type=Path, default=d.out, help="output folder (default: %(default)s)")
    parser.add_argument("--stage1-steps", type=int, default=d.stage1_steps)
    parser.add_argument("--stage2-steps", type=int, default=d.stage2_steps)
    parser.add_argument("--train-sequences", type=int, default=d.train_sequences)
    parser.add_argument("--posefree-sequences", type=int, default=d.posefree_sequences)
    parser.add_argument("--eval-sequences", type=int, default=d.eval_sequences)
    parser.add_argument("--frames", type=int, default=d.frames, help="frames per rendered sequence")
    parser.add_argument("--clip-length", type=int, default=d.clip_length)
    parser.add_argument("--size", type=int, nargs=2, default=list(d.size), metavar=("H", "W"))
    parser.add_argument("--video-frames", type=int, default=d.video_frames)
    parser.add_argument("--max-eval-depth", type=float, default=d.max_eval_depth,
                        help="depth range scored, metres (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--workers", type=int, default=d.workers, help="rendering processes / torch threads")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if any(v % 14 or v <= 0 for v in args.size):
        parser.error(f"--size must be positive multiples of 14 (the ViT patch size), got {args.size}")
    settings = DemoSettings(
        out=args.out, train_sequences=args.train_sequences, posefree_sequences=args.posefree_sequences,
        eval_sequences=args.eval_sequences, frames=args.frames, clip_length=args.clip_length,
        size=tuple(args.size), video_frames=args.video_frames, stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps, seed=args.seed, workers=args.workers,
        max_eval_depth=args.max_eval_depth,
    )
    if args.frames < args.clip_length:
        parser.error("--frames must be at least --clip-length")
    if args.clip_length < 5:
        parser.error("--clip-length must be at least 5 (the windowed inference needs overlapping windows)")
    if args.fresh and settings.out.exists():
        shutil.rmtree(settings.out)
    elif settings.out.exists() and any(settings.out.iterdir()):
        print(f"note: {settings.out} exists; its shards and checkpoints are overwritten", file=sys.stderr)
        for sub in ("stage1", "stage2", "shards", "inference"):
            shutil.rmtree(settings.out / sub, ignore_errors=True)
    result = run(settings)
    print()
    print(format_table(result["metrics"]))
    print(f"\nwall time {result['seconds']['total'] / 60:.1f} min "
          f"(render {result['seconds']['render']:.0f} s, training {result['seconds']['train']:.0f} s)")
    print("\nwrote:")
    p = result["paths"]
    for label, key in (("shards", "shards"), ("stage-1 checkpoint", "stage1_checkpoint"),
                       ("stage-2 checkpoint", "stage2_checkpoint"), ("rendered video", "video"),
                       ("inference outputs", "inference")):
        print(f"  {label:<20} {p[key]}")
    print(f"  {'TensorBoard logs':<20} {' '.join(p['tensorboard'])}  (tensorboard --logdir {settings.out})")
    print(f"  {'metrics table':<20} {settings.out / 'metrics.md'}, {settings.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
