"""The Gradio page of ``gemdepth app``: inputs and settings, a run through the same pipeline
as ``gemdepth infer`` (:func:`gemdepth.inference.run_source`), and the result viewers.

Runs go through Gradio's queue with one worker per device (``concurrency_id`` = the device), so
concurrent users wait in line instead of loading two models on one GPU. Each browser session
writes into its own folder under the app's temporary root; the folder is removed when the tab
closes (``demo.unload``), or at the latest when the session's state expires
(``gr.State(delete_callback=...)``), and the whole root when the app stops. Every failure the
user can cause is a :class:`gradio.Error` with a message, never a stack trace.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from gemdepth.app.inputs import AppLimits, open_upload, render_samples
from gemdepth.app.models import ModelBank, ModelChoice
from gemdepth.app.results import ResultError, ResultFolder, trajectory_figure
from gemdepth.inference.readers import InputError

__all__ = ["AppSettings", "GemDepthApp", "PRECISIONS"]

log = logging.getLogger("gemdepth.app")

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NO_SAMPLE = "(none: use the upload)"


@dataclass
class AppSettings:
    """Everything ``gemdepth app`` was started with."""

    choices: list[ModelChoice] = field(default_factory=list)
    results: list[Path] = field(default_factory=list)
    device: str = "cpu"
    limits: AppLimits = field(default_factory=AppLimits)
    root: Path | None = None  # temporary root (made and removed by the app when None)
    sample_size: tuple[int, int] = (168, 224)
    sample_frames: int = 48
    samples: bool = True
    max_view_points: int = 200_000
    queue_size: int = 16
    session_ttl: int = 3 * 3600  # seconds a session's files outlive an unclosed tab


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every exception into a ``gr.Error`` message (details of unexpected ones go to the log)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (InputError, ResultError, ValueError, KeyError, FileNotFoundError) as err:
            text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise gr.Error(str(text), duration=None) from None
        except torch.cuda.OutOfMemoryError:
            raise gr.Error("out of GPU memory: lower the input size or the window, or use bf16", duration=None) from None
        except Exception as err:  # noqa: BLE001 - shown as a message; logged with its trace
            log.exception("%s failed", fn.__name__)
            first = (str(err).splitlines() or [""])[0][:300]
            raise gr.Error(
                f"the run failed ({type(err).__name__}: {first}); the server log has the details", duration=None
            ) from None

    return wrapper


class GemDepthApp:
    """The app's state (models, samples, temporary root) and its Gradio Blocks."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self._own_root = settings.root is None
        self.root = Path(tempfile.mkdtemp(prefix="gemdepth-app-")) if settings.root is None else Path(settings.root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sessions").mkdir(exist_ok=True)
        self.bank = ModelBank(settings.choices, settings.device) if settings.choices else None
        self.samples: dict[str, Path] = {}
        if self.bank is not None and settings.samples:
            self.samples = render_samples(self.root / "samples", settings.sample_size, settings.sample_frames)
        self.results = {self._result_label(p): p for p in settings.results}
        self._windows: dict[str, tuple[int, int, int]] = {}
        if self.bank is not None:  # imported once here: the training module pulls in Lightning
            from gemdepth.training.task import window_settings

            self._windows = {c.label: window_settings(c.window) for c in settings.choices}
        self._runs = 0
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------ sessions
    def _result_label(self, path: Path) -> str:
        return f"{path.name}  ({path})"

    def session_dir(self, request: gr.Request | None) -> Path:
        """This browser session's folder (made on first use)."""
        key = getattr(request, "session_hash", None) or "default"
        safe = "".join(c for c in str(key) if c.isalnum() or c in "-_")[:64] or "default"
        folder = self.root / "sessions" / safe
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def remove_session(self, folder: str | Path | None) -> None:
        """Delete one session's folder (only folders inside this app's root)."""
        if not folder:
            return
        folder = Path(folder)
        if folder.resolve().parent == (self.root / "sessions").resolve():
            shutil.rmtree(folder, ignore_errors=True)

    def on_unload(self, request: gr.Request) -> None:
        self.remove_session(self.root / "sessions" / str(request.session_hash))

    def close(self) -> None:
        """Remove the temporary root (when the app made it)."""
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ viewing
    def _view(self, result: ResultFolder, glb_path: Path) -> tuple[Any, ...]:
        """The viewer outputs of a result folder."""
        cams = result.cameras()
        figure = trajectory_figure(cams[0], f"camera trajectory ({result.name})") if cams is not None else None
        glb = result.viewer_glb(glb_path, self.settings.max_view_points)
        video = result.file("depth.mp4")
        return (
            result.summary(),
            str(video) if video else None,
            gr.Slider(minimum=0, maximum=max(result.frames - 1, 0), value=0, step=1, interactive=result.frames > 1),
            result.frame_image(0),
            figure,
            str(glb) if glb else None,
            [str(p) for p in result.downloads()] + ([str(glb)] if glb else []),
            str(result.folder),
        )

    @_user_errors
    def open_result(self, label: str, request: gr.Request) -> tuple[Any, ...]:
        """Show one of the ``--results`` folders."""
        if label not in self.results:
            raise ResultError(f"unknown result {label!r}")
        result = ResultFolder(self.results[label])
        out = self.session_dir(request) / "view"
        out.mkdir(exist_ok=True)
        view = self._view(result, out / f"{result.name}_points.glb")
        return (*view, str(self.session_dir(request)))

    @_user_errors
    def show_frame(self, index: float, folder: str | None) -> Any:
        """The depth of one frame with its colour bar."""
        if not folder:
            return None
        return ResultFolder(Path(folder)).frame_image(int(index))

    def model_defaults(self, label: str) -> tuple[Any, ...]:
        """Input size and window settings suggested for a model."""
        if self.bank is None or label not in self.bank.choices:
            return gr.Slider(), gr.Number(), gr.Number(), gr.Number(), ""
        choice = self.bank.choices[label]
        window, overlap, interp = self._windows[label]
        note = ("⚠️ **Untrained model (random weights)**: it runs the whole pipeline, but its depth, cameras and "
                "point cloud are meaningless. Start the app with `--ckpt` or `--model PRESET` for real results."
                if choice.untrained else "")
        return gr.Slider(value=choice.input_size), window, overlap, interp, note

    # ------------------------------------------------------------------ running
    @_user_errors
    def run(
        self,
        upload: str | None,
        sample: str | None,
        model_label: str,
        input_size: float,
        precision: str,
        window: float,
        overlap: float,
        interp: float,
        stride: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's injection idiom
    ) -> tuple[Any, ...]:
        """One video through the model; returns the viewer outputs."""
        from gemdepth.inference.pipeline import InferenceOptions, OutputOptions, run_source
        from gemdepth.inference.windowing import WindowConfig

        if self.bank is None:
            raise gr.Error("this app was started with --results only: there is no model to run", duration=None)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and not self.settings.device.startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device; on the CPU use fp32 or bf16")
        size, stride_i = int(input_size), int(stride or 1)
        if size < 14 or size % 14:
            raise ValueError(f"input size must be a positive multiple of 14 (the ViT patch), got {size}")
        config = WindowConfig(int(window), int(overlap), None, int(interp))  # ValueError names the rule
        choice = self.bank.choices.get(model_label)
        if choice is None:
            raise KeyError(f"unknown model {model_label!r}; choose one of: {', '.join(self.bank.labels)}")
        if config.window > choice.window:
            raise ValueError(f"this model's temporal head takes at most {choice.window} frames: lower the window")

        session = self.session_dir(request)
        with self._count_lock:
            self._runs += 1
            number = self._runs
        work = session / f"run-{number}"
        try:  # a failed run leaves nothing behind (its unpacked frames, partial outputs)
            if upload:
                source = open_upload(upload, work / "input", self.settings.limits, stride=stride_i)
            elif sample and sample in self.samples:
                source = open_upload(self.samples[sample], work / "input", self.settings.limits, stride=stride_i)
            else:
                raise gr.Error("upload a video or a zip of frames, or pick a rendered sample", duration=None)

            progress(0.0, desc=f"loading {choice.label}")
            _, model = self.bank.get(model_label)
            progress(0.0, desc=f"running {source.name}")
            inference = InferenceOptions(
                input_size=size, window=config.window, overlap=config.overlap, interp=config.interp,
                device=self.settings.device, dtype=PRECISIONS[precision],
            )
            outputs = OutputOptions(
                progress=True,  # gemdepth infer's defaults otherwise; the viewer gets a subsample of points.ply
                extra_run_info={**choice.info, "model_label": choice.label},
            )
            with torch.inference_mode():
                run_source(model, source, work / "out", inference, outputs)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        progress(1.0, desc="preparing the viewers")
        for old in session.glob("run-*"):  # keep one run per session (bounded disk), once the new one is done
            if old != work:
                shutil.rmtree(old, ignore_errors=True)
        result = ResultFolder(work / "out" / source.name)
        return (*self._view(result, work / "points.glb"), str(session))

    # ------------------------------------------------------------------ page
    def build(self) -> gr.Blocks:
        """The Gradio Blocks of the app."""
        s = self.settings
        device = s.device
        with gr.Blocks(title="gemdepth", delete_cache=(600, s.session_ttl)) as demo:
            gr.Markdown(
                "# gemdepth\nVideo depth, cameras and a fused point cloud (the `gemdepth infer` pipeline). "
                f"Device: `{device}`; up to {s.limits.max_frames} frames per run"
                + (f", frames downscaled to {s.limits.max_resolution} px on the longest side"
                   if s.limits.max_resolution else "") + "."
            )
            session_state = gr.State(None, time_to_live=s.session_ttl, delete_callback=self.remove_session)
            folder_state = gr.State(None)
            run_button = open_button = None
            if self.bank is not None:
                first = self.bank.choices[self.bank.labels[0]]
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="Video (.mp4, .mov, .avi, .mkv, .webm) or .zip of frames",
                                         type="filepath", file_count="single")
                        sample = gr.Dropdown([*self.samples, NO_SAMPLE], value=next(iter(self.samples), NO_SAMPLE),
                                             label="…or a rendered sample (used when nothing is uploaded)")
                        run_button = gr.Button("Run", variant="primary")
                    with gr.Column(scale=1):
                        model = gr.Dropdown(self.bank.labels, value=first.label, label="Model")
                        untrained_note = gr.Markdown("")
                        with gr.Row():
                            input_size = gr.Slider(28, 1022, value=first.input_size, step=14,
                                                   label="Input size (short side, px)")
                            precision = gr.Radio(["fp32", "bf16"] + (["fp16"] if device.startswith("cuda") else []),
                                                 value="fp32", label="Precision")
                        with gr.Accordion("Window settings", open=False):
                            with gr.Row():
                                window = gr.Number(32, precision=0, label="Window (frames)", minimum=5)
                                overlap = gr.Number(10, precision=0, label="Overlap", minimum=3)
                                interp = gr.Number(8, precision=0, label="Cross-faded frames", minimum=2)
                                stride = gr.Number(1, precision=0, label="Frame stride", minimum=1)
            if self.results:
                with gr.Row():
                    result_pick = gr.Dropdown(list(self.results), value=next(iter(self.results)),
                                              label="Existing gemdepth infer outputs", scale=4)
                    open_button = gr.Button("Open", scale=1)
            status = gr.Markdown("", label="Summary")
            with gr.Row():
                video = gr.Video(label="Source | depth", interactive=False, autoplay=True, loop=True)
                with gr.Column():
                    frame_image = gr.Image(label="Depth of one frame", interactive=False,
                                           type="numpy", format="png")
                    frame = gr.Slider(0, 1, value=0, step=1, label="Frame", interactive=False)
            with gr.Row():
                plot = gr.Plot(label="Camera trajectory")
                cloud = gr.Model3D(label="Fused point cloud (red: camera path)", clear_color=(0.12, 0.12, 0.14, 1.0),
                                   height=420)
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)
            view_outputs = [status, video, frame, frame_image, plot, cloud, files, folder_state, session_state]

            if run_button is not None:
                model.change(self.model_defaults, model, [input_size, window, overlap, interp, untrained_note],
                             api_name=False, concurrency_limit=None, show_progress="hidden")
                run_button.click(
                    self.run,
                    [upload, sample, model, input_size, precision, window, overlap, interp, stride],
                    view_outputs,
                    api_name="run",
                    concurrency_limit=1,
                    concurrency_id=f"device-{device}",
                )
                demo.load(self.model_defaults, model, [input_size, window, overlap, interp, untrained_note],
                          api_name=False, concurrency_limit=None, show_progress="hidden")
            if open_button is not None:
                open_button.click(self.open_result, result_pick, view_outputs, api_name="open_result",
                                  concurrency_limit=4)
                demo.load(self.open_result, result_pick, view_outputs, api_name=False)
            frame.release(self.show_frame, [frame, folder_state], frame_image, api_name="frame",
                          concurrency_limit=4, show_progress="hidden")
            demo.unload(self.on_unload)
        demo.queue(max_size=s.queue_size, default_concurrency_limit=1)
        return demo
