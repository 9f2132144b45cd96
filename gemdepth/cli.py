"""The ``gemdepth`` command.

``fit``/``validate``/``test``/``predict`` go to LightningCLI (see :mod:`gemdepth.training.cli`);
the tool commands below each live in their own module with a ``main(argv)`` function, imported
only when called so ``gemdepth --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module with main(argv), one-line help)
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("gemdepth.weights.convert", "convert official weights into a self-describing checkpoint"),
    "data": ("gemdepth.data.cli", "make, convert and inspect WebDataset shards"),
    "infer": ("gemdepth.inference.cli", "run a model on videos or frame folders"),
    "bench": ("gemdepth.bench", "forward-pass benchmark per preset, size and precision"),
    "demo": ("gemdepth.demo", "the quickstart: synthetic corpus, two-stage training, evaluation, inference"),
    "models": ("gemdepth.weights.hub", "list the model presets, their released weights, licences and cache state"),
    "export": ("gemdepth.export", "export the window model to ONNX or a torch.export program"),
    "app": ("gemdepth.app.cli", "web app (Gradio): run a video, see depth, cameras and point cloud"),
    "experiment": ("gemdepth.experiment.cli", "train and evaluate every variant x seed of an ablation, write table and plots"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    lines = ["usage: gemdepth COMMAND [ARGS]", "", "commands:"]
    for name in LIGHTNING_COMMANDS:
        lines.append(f"  {name:<9} LightningCLI {name} (see `gemdepth {name} --help`)")
    for name, (_, text) in TOOL_COMMANDS.items():
        lines.append(f"  {name:<9} {text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``gemdepth COMMAND ...``; returns a process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in TOOL_COMMANDS:
        module = importlib.import_module(TOOL_COMMANDS[command][0])
        return int(module.main(rest) or 0)
    if command in LIGHTNING_COMMANDS:
        from gemdepth.triton_guard import skip_unusable_triton

        skip_unusable_triton()  # before Lightning's imports reach Triton (a CPU-only run: 76 MiB saved)
        from gemdepth.training.cli import run_lightning_cli

        return int(run_lightning_cli([command, *rest]) or 0)
    print(f"gemdepth: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
