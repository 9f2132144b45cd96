"""Pure ``nn.Module`` code: DINOv2 encoder (timm), DPT heads, hosts, plug-ins and the model builder."""

from gemdepth.triton_guard import skip_unusable_triton

skip_unusable_triton()  # before timm's import chain reaches Triton (no GPU: 76 MiB saved)

from gemdepth.models.encoder import ENCODER_PRESETS, DinoV2Encoder, EncoderSpec, interpolate_pos_embed  # noqa: E402
from gemdepth.models.model import VideoDepthModel, build_model, count_parameters, normalize_config  # noqa: E402
from gemdepth.models.presets import PRESETS, get_preset, preset_names, resolve_model_config  # noqa: E402
from gemdepth.models.registry import HOSTS, PLUGINS  # noqa: E402
from gemdepth.models.types import DepthOutput, VideoFeatures  # noqa: E402

__all__ = [
    "DepthOutput",
    "DinoV2Encoder",
    "ENCODER_PRESETS",
    "EncoderSpec",
    "HOSTS",
    "PLUGINS",
    "PRESETS",
    "VideoDepthModel",
    "VideoFeatures",
    "build_model",
    "count_parameters",
    "get_preset",
    "interpolate_pos_embed",
    "normalize_config",
    "preset_names",
    "resolve_model_config",
]
