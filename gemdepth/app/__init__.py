"""``gemdepth app``: a Gradio web app to run the model on a video and look at the results.

Upload a video or a zip of frames (or pick a sample the synthetic renderer makes at start-up),
choose the model, input size, precision and window settings, and see the source and depth
side by side, a per-frame depth view with its colour bar, the camera trajectory and the fused
point cloud in an interactive 3D viewer, with the output files to download. ``--results OUT/``
opens existing ``gemdepth infer`` outputs without a model. Needs the ``app`` extra
(``pip install "gemdepth[app]"``); only :mod:`gemdepth.app.ui` imports Gradio.
"""

from gemdepth.app.cli import build_parser, main

__all__ = ["build_parser", "main"]
