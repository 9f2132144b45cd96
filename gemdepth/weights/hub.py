"""The model zoo: released weights of each preset on the Hugging Face Hub, fetched by name.

``resolve_weights("vda-vits")`` returns the local path of ``video_depth_anything_vits.pth`` from
``depth-anything/Video-Depth-Anything-Small``, downloading it once into the standard Hub cache
with :func:`huggingface_hub.hf_hub_download` (its progress bar, its integrity checks, its
``HF_HUB_CACHE`` / ``HF_HOME`` / ``HF_HUB_OFFLINE`` settings). Offline, a file missing from the
cache is a :class:`WeightsNotCachedError` that names the repository, the file, the cache
folder and how to put the file there by hand. Non-commercial licences are printed when a file is
first downloaded. ``gemdepth models`` lists the presets with their weights and cache state.

Repository ids, file names and licences are those of the official READMEs and Hub model cards
(Depth-Anything-V2 README and ``metric_depth/README.md``; Video-Depth-Anything README,
``get_weights.sh`` and ``metric_depth/README.md``; the GemDepth README). Parameter counts are the
READMEs'; sizes are float32 state dicts (4 bytes a parameter), approximate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "HubWeights",
    "WeightsNotCachedError",
    "ZOO",
    "cached_weights",
    "hub_cache_dir",
    "is_offline",
    "main",
    "resolve_weights",
    "weights_for",
]

APACHE = "apache-2.0"
CC_BY_NC = "cc-by-nc-4.0"


@dataclass(frozen=True)
class HubWeights:
    """Where a preset's released weights live and under which terms."""

    repo_id: str
    filename: str
    licence: str
    params_m: float  # millions of parameters, as the official README gives them
    source: str  # where the names were confirmed
    revision: str = "main"

    @property
    def approx_bytes(self) -> int:
        """Float32 file size (4 bytes a parameter), approximate."""
        return int(self.params_m * 1e6 * 4)

    @property
    def non_commercial(self) -> bool:
        text = self.licence.lower()
        return "-nc" in text or "non-commercial" in text

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision}/{self.filename}"


_DAV2 = "Depth-Anything-V2 README (Small apache-2.0, Base/Large cc-by-nc-4.0)"
_DAV2_METRIC = "Depth-Anything-V2 metric_depth/README.md; model cards say apache-2.0"
_VDA = "Video-Depth-Anything README and get_weights.sh; model cards (Small apache-2.0, Large cc-by-nc-4.0)"
_VDA_METRIC = "Video-Depth-Anything metric_depth/README.md (Small card apache-2.0)"

ZOO: dict[str, HubWeights] = {
    "dav2-vits": HubWeights(
        "depth-anything/Depth-Anything-V2-Small", "depth_anything_v2_vits.pth", APACHE, 24.8, _DAV2
    ),
    "dav2-vitb": HubWeights(
        "depth-anything/Depth-Anything-V2-Base", "depth_anything_v2_vitb.pth", CC_BY_NC, 97.5, _DAV2
    ),
    "dav2-vitl": HubWeights(
        "depth-anything/Depth-Anything-V2-Large", "depth_anything_v2_vitl.pth", CC_BY_NC, 335.3, _DAV2
    ),
    "vda-vits": HubWeights(
        "depth-anything/Video-Depth-Anything-Small", "video_depth_anything_vits.pth", APACHE, 28.4, _VDA
    ),
    # Base: name from the VDA README's table; its licence (cc-by-nc-4.0) is the README's, the card was not read.
    "vda-vitb": HubWeights(
        "depth-anything/Video-Depth-Anything-Base", "video_depth_anything_vitb.pth", CC_BY_NC, 113.1, _VDA
    ),
    "vda-vitl": HubWeights(
        "depth-anything/Video-Depth-Anything-Large", "video_depth_anything_vitl.pth", CC_BY_NC, 381.8, _VDA
    ),
    # Metric VDA: Small's card says apache-2.0; Base/Large licences follow the relative models
    # (cc-by-nc-4.0) — not confirmed on their cards.
    "vda-vits-metric": HubWeights(
        "depth-anything/Metric-Video-Depth-Anything-Small", "metric_video_depth_anything_vits.pth", APACHE, 28.4,
        _VDA_METRIC,
    ),
    "vda-vitb-metric": HubWeights(
        "depth-anything/Metric-Video-Depth-Anything-Base", "metric_video_depth_anything_vitb.pth", CC_BY_NC, 113.1,
        _VDA_METRIC,
    ),
    "vda-vitl-metric": HubWeights(
        "depth-anything/Metric-Video-Depth-Anything-Large", "metric_video_depth_anything_vitl.pth", CC_BY_NC, 381.8,
        _VDA_METRIC,
    ),
    # Metric DAv2 (indoor: Hypersim, max depth 20 m; outdoor: Virtual KITTI 2, 80 m). Hypersim-Large/Base
    # and VKITTI-Small cards read apache-2.0; the other three are assumed to match.
    **{
        f"dav2-{size}-{data}-metric": HubWeights(
            f"depth-anything/Depth-Anything-V2-Metric-{repo_data}-{label}",
            f"depth_anything_v2_metric_{data}_{size}.pth",
            APACHE,
            params,
            _DAV2_METRIC,
        )
        for size, label, params in (("vits", "Small", 24.8), ("vitb", "Base", 97.5), ("vitl", "Large", 335.3))
        for data, repo_data in (("hypersim", "Hypersim"), ("vkitti", "VKITTI"))
    },
    # GemDepth: the README links YuechengLiu/GemDepth/resolve/main/gemdepth.pth; the model card states
    # no licence. It is fine-tuned from Video-Depth-Anything-Large (cc-by-nc-4.0), so it is treated as
    # non-commercial. Parameter count not published: 677.1M is our preset's (VDA-L plus GEM and ASTT);
    # the file also stores a few never-used blocks, so it is somewhat larger.
    "gemdepth-vda-vitl": HubWeights(
        "YuechengLiu/GemDepth",
        "gemdepth.pth",
        "unspecified; derived from VDA-Large (cc-by-nc-4.0): non-commercial",
        677.1,
        "GemDepth README (model card has no licence)",
    ),
}


class WeightsNotCachedError(FileNotFoundError):
    """The Hub is unreachable (or offline mode is on) and the file is not in the cache."""


def hub_cache_dir() -> Path:
    """The Hub cache folder as ``huggingface_hub`` resolves it, read from the environment now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def weights_for(preset: str) -> HubWeights:
    """The released weights of ``preset``; ``KeyError`` naming the presets that have some."""
    if preset not in ZOO:
        from gemdepth.models.presets import preset_names

        known = preset in preset_names()
        why = "has no released weights" if known else "is not a model preset"
        raise KeyError(
            f"{preset!r} {why}; presets with weights on the Hub: {', '.join(ZOO)}. "
            f"For other weights pass a local file (--ckpt PATH / load_model(PATH, config=...))."
        )
    return ZOO[preset]


def _repo_folder(w: HubWeights, cache_dir: Path) -> Path:
    return cache_dir / ("models--" + w.repo_id.replace("/", "--"))


def cached_weights(preset: str, cache_dir: str | Path | None = None) -> Path | None:
    """Path of the preset's file in the Hub cache, or ``None`` if it is not there."""
    from huggingface_hub import try_to_load_from_cache

    w = weights_for(preset)
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    found = try_to_load_from_cache(w.repo_id, w.filename, cache_dir=str(cache), revision=w.revision)
    return Path(found) if isinstance(found, str) else None


def _placement_help(w: HubWeights, cache: Path) -> str:
    repo = _repo_folder(w, cache)
    return (
        f"  repository: {w.repo_id}\n"
        f"  file:       {w.filename}\n"
        f"  cache:      {cache} (HF_HUB_CACHE / HF_HOME)\n"
        f"  expected:   {repo}/snapshots/<commit>/{w.filename} with {repo}/refs/{w.revision} holding <commit>\n"
        f"To put it there by hand: on a machine with network run\n"
        f"    hf download {w.repo_id} {w.filename}\n"
        f"  and copy {repo.name}/ into {cache}/; or download {w.url}, save it as\n"
        f"    {repo}/snapshots/manual/{w.filename}\n"
        f"  and write the word 'manual' into {repo}/refs/{w.revision}; or skip the cache and pass the file "
        f"itself (gemdepth infer --ckpt FILE --model PRESET)."
    )


def _licence_notice(preset: str, w: HubWeights) -> str:
    size = f"{w.approx_bytes / 1e9:.2f} GB" if w.approx_bytes >= 1e9 else f"{w.approx_bytes / 1e6:.0f} MB"
    text = f"gemdepth: downloading {w.repo_id}/{w.filename} (~{size}) for {preset}; licence: {w.licence}"
    if w.non_commercial:
        text += "\ngemdepth: NOTE these weights are for NON-COMMERCIAL use only (see the model card: " \
                f"https://huggingface.co/{w.repo_id})"
    return text


def resolve_weights(
    preset: str,
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
) -> Path:
    """Local path of ``preset``'s released weights, downloaded into the Hub cache on first use.

    ``offline`` defaults to ``HF_HUB_OFFLINE``; offline, or when the Hub cannot be reached, a file
    not in the cache raises :class:`WeightsNotCachedError` saying where to place it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    w = weights_for(preset)
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    offline = is_offline() if offline is None else offline
    cached = cached_weights(preset, cache)
    if cached is not None and offline:
        return cached
    if cached is None and not offline:
        print(_licence_notice(preset, w), file=sys.stderr)
    try:
        path = hf_hub_download(
            w.repo_id,
            w.filename,
            revision=w.revision,
            cache_dir=str(cache),
            local_files_only=offline,
            library_name="gemdepth",
        )
    except LocalEntryNotFoundError as err:
        reason = (
            "offline mode (HF_HUB_OFFLINE=1)" if offline else f"the Hub could not be reached ({type(err).__name__})"
        )
        raise WeightsNotCachedError(
            f"the weights of preset {preset!r} are not in the Hub cache and cannot be downloaded: {reason}.\n"
            + _placement_help(w, cache)
        ) from None
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise WeightsNotCachedError(
            f"the Hub has no {w.filename} in {w.repo_id} (preset {preset!r}): {str(err).splitlines()[0]}\n"
            + _placement_help(w, cache)
        ) from None
    except (HfHubHTTPError, OSError) as err:
        if cached is not None:  # the hub client normally falls back itself; be explicit
            log.warning("%s: Hub check failed (%s); using the cached file", preset, err)
            return cached
        raise WeightsNotCachedError(
            f"downloading {w.repo_id}/{w.filename} for preset {preset!r} failed: {err}\n" + _placement_help(w, cache)
        ) from None
    return Path(path)


def model_rows(cache_dir: str | Path | None = None) -> list[dict[str, object]]:
    """One row per preset: its weights (or none), size, licence and whether they are cached."""
    from gemdepth.models.presets import preset_names

    rows: list[dict[str, object]] = []
    for name in preset_names():
        w = ZOO.get(name)
        row: dict[str, object] = {"preset": name}
        if w is None:
            row |= {"repo_id": None, "filename": None, "licence": None, "params_m": None, "cached": None}
        else:
            path = cached_weights(name, cache_dir)
            row |= asdict(w) | {
                "approx_bytes": w.approx_bytes,
                "non_commercial": w.non_commercial,
                "cached": str(path) if path else None,
            }
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``gemdepth models``: the presets, their Hub weights, sizes, licences, cache state."""
    p = argparse.ArgumentParser(prog="gemdepth models", description=main.__doc__)
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--cache-dir", type=Path, default=None, help="Hub cache (default: HF_HUB_CACHE / HF_HOME)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    rows = model_rows(args.cache_dir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"Hub cache: {args.cache_dir or hub_cache_dir()}")
    header = f"{'preset':<26} {'weights (Hub repo / file)':<96} {'params':>7} {'size':>8}  {'cached':<6} licence"
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["repo_id"] is None:
            print(f"{r['preset']:<26} {'(no released weights: train or convert your own, pass --ckpt)'}")
            continue
        size = int(r["approx_bytes"])  # type: ignore[call-overload]
        size_s = f"{size / 1e9:.2f}GB" if size >= 1e9 else f"{size / 1e6:.0f}MB"
        where = f"{r['repo_id']} / {r['filename']}"
        print(
            f"{r['preset']:<26} {where:<96} {float(r['params_m']):>6.1f}M {size_s:>8}  "  # type: ignore[arg-type]
            f"{'yes' if r['cached'] else 'no':<6} {r['licence']}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
