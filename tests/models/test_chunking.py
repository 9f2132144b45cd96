"""Memory-bounded forward: same numbers as the one-call forward, budget parsing, checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gemdepth.models import build_model
from gemdepth.models.chunking import budgeted_modules, map_rows, normalize_checkpointing, parse_memory, rows_per_chunk

MINI_ENCODER = {"embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 4, "layer_idx": [0, 1, 2, 3]}
PLUGIN_SETS = {
    "none": [],
    "astt": [{"name": "astt"}],
    "gem": [{"name": "gem"}],
    "gem+astt": [{"name": "gem"}, {"name": "astt"}],
    "astt-late": [{"name": "astt", "position": "late"}],
    "astt-mid": [{"name": "astt", "position": "mid"}],
}


def mini(host: str, plugins: list, num_frames: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = build_model({
        "host": host,
        "encoder": dict(MINI_ENCODER),
        "head": {"features": 32, "out_channels": [32, 32, 64, 64], "num_frames": num_frames},
        "plugins": plugins,
    })
    for mm in getattr(model.head, "motion_modules", []):  # open the identity-initialised paths
        nn.init.normal_(mm.temporal_transformer.proj_out.weight, std=0.2)
    for plugin in model.plugins.values():
        if hasattr(plugin, "proj_out"):
            nn.init.normal_(plugin.proj_out.weight, std=0.2)
    nn.init.constant_(model.head.scratch.output_conv2[2].bias, 1.0)
    return model.eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MB", 512 * 2**20), ("2GB", 2 * 2**30), ("1.5g", int(1.5 * 2**30)), ("1000", 1000), (4096, 4096),
     (None, None), ("none", None), ("64 KiB", 64 * 1024)],
)
def test_parse_memory(text: object, expected: int | None) -> None:
    assert parse_memory(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "message"), [("2XB", "cannot read the memory size"), ("-1", "cannot read"),
                                               (0, "must be positive")])
def test_parse_memory_errors(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_memory(text)  # type: ignore[arg-type]


def test_rows_per_chunk() -> None:
    assert rows_per_chunk(10, 100, None) == 10
    assert rows_per_chunk(10, 100, 350) == 3
    assert rows_per_chunk(10, 100, 1) == 1
    assert rows_per_chunk(10, 100, 10**9) == 10


@pytest.mark.parametrize("grad", [False, True])
def test_map_rows_joins_slices_like_one_call(grad: bool) -> None:
    x = torch.randn(7, 3, requires_grad=grad)
    fn = lambda t, k: (t * k, t.sum(-1))  # noqa: E731
    with torch.set_grad_enabled(grad):
        a, b = map_rows(fn, 7, 3, x, 2.0)
    torch.testing.assert_close(a, x * 2.0, rtol=0, atol=0)
    torch.testing.assert_close(b, x.sum(-1), rtol=0, atol=0)
    if grad:
        (a.sum() + b.sum()).backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))


def _budgets(model: nn.Module, frames: int) -> list[int]:
    """1 byte (every slice one row) and budgets that give the full-resolution stage 2 and 3 frames."""
    per_frame = model.head.bytes_per_frame(4, 5)
    return [1, 2 * per_frame + 7, 3 * per_frame]


@pytest.mark.parametrize("host", ["dav2", "vda"])
@pytest.mark.parametrize("plugins", list(PLUGIN_SETS))
def test_bounded_forward_matches_one_call(host: str, plugins: str) -> None:
    model = mini(host, PLUGIN_SETS[plugins])
    video = torch.randn(1, 7, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        model.set_max_memory(None)
        ref = model(video)
        for budget in _budgets(model, 7):
            assert model.set_max_memory(budget) == budget
            out = model(video)
            # oneDNN picks other conv algorithms for other batch sizes on tiny maps (≈5e-7 per conv,
            # 0 at real sizes); an ASTT on the head's maps, random and opened wide, amplifies that
            tol = 1e-5 if plugins in ("astt-late", "astt-mid") else 1e-6
            assert rel(out.depth, ref.depth) <= tol, (budget, rel(out.depth, ref.depth))
            if ref.pose_enc is not None:
                assert rel(out.pose_enc[-1], ref.pose_enc[-1]) <= 1e-5
    assert all(m.max_memory == budget for m in model.modules() if hasattr(m, "max_memory"))


def test_bounded_forward_with_batch_of_two() -> None:
    model = mini("vda", PLUGIN_SETS["gem+astt"])
    video = torch.randn(2, 5, 3, 56, 70)
    with torch.inference_mode():
        model.set_max_memory(None)
        ref = model(video).depth
        model.set_max_memory(1)
        assert rel(model(video).depth, ref) <= 1e-6


def test_head_slices_really_are_bounded() -> None:
    """With a budget of one frame, no head convolution sees more than one frame at a time."""
    model = mini("vda", [])
    seen: list[int] = []
    handles = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
               for name, m in model.head.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model.set_max_memory(1)
        model(torch.randn(1, 5, 3, 28, 28))
    for h in handles:
        h.remove()
    assert seen and max(seen) == 1


@pytest.mark.parametrize("host", ["dav2", "vda"])
def test_training_gradients_match_with_slices(host: str) -> None:
    model = mini(host, PLUGIN_SETS["gem+astt"])
    model.train()
    for mod in model.modules():  # no dropout: only the slicing differs between the runs
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
        if hasattr(mod, "drop_prob"):
            mod.drop_prob = 0.0
        if isinstance(getattr(mod, "attn_drop", None), float):
            mod.attn_drop = 0.0
    video = torch.randn(1, 5, 3, 56, 70)
    grads = []
    for budget in (None, 1):
        model.zero_grad()
        model.set_max_memory(budget)
        torch.manual_seed(5)
        model(video).depth.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name, g in grads[0].items():
        # weight gradients are sums over frames: per-slice partial sums round differently (≈1e-5)
        err = ((grads[1][name] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
        assert err <= 2e-4, (name, err)


def test_checkpointing_config() -> None:
    assert normalize_checkpointing(None) == {"encoder": False, "plugins": False, "head": False}
    assert normalize_checkpointing(["head"]) == {"encoder": False, "plugins": False, "head": True}
    assert normalize_checkpointing(True) == {"encoder": True, "plugins": True, "head": True}
    with pytest.raises(ValueError, match=r"unknown checkpointing parts \['decoder'\]"):
        normalize_checkpointing(["decoder"])
    model = build_model({"host": "vda", "encoder": dict(MINI_ENCODER),
                         "head": {"features": 32, "out_channels": [32, 32, 64, 64]},
                         "plugins": ["gem", "astt"], "checkpointing": {"encoder": True, "head": True}})
    assert model.encoder.grad_checkpointing and model.head.checkpointing
    assert not model.plugins["gem"].checkpointing and not model.plugins["astt"].checkpointing
    assert model.config["checkpointing"] == {"encoder": True, "plugins": False, "head": True}


@pytest.mark.parametrize("host", ["dav2", "vda"])
def test_checkpointing_keeps_gradients_identical(host: str) -> None:
    model = mini(host, PLUGIN_SETS["gem+astt"]).train()  # dropout and pose masks on: RNG must replay
    video = torch.randn(1, 4, 3, 28, 28)
    grads = []
    for on in (False, True):
        model.zero_grad()
        model.set_checkpointing(encoder=on, plugins=on, head=on)
        torch.manual_seed(11)
        out = model(video)
        (out.depth.square().mean() + out.pose_enc[-1].square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_recomputes_in_backward() -> None:
    """Checkpointed parts run their forward a second time during backward."""
    model = mini("vda", PLUGIN_SETS["gem+astt"]).train()
    calls = {"enc": 0, "astt": 0, "head": 0}
    # pre-hooks: the recomputation stops as soon as it has what backward needs (early stop)
    model.encoder.blocks[0].register_forward_pre_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    model.plugins["astt"].spatial_blocks[0].register_forward_pre_hook(
        lambda *a: calls.__setitem__("astt", calls["astt"] + 1))
    model.head.scratch.output_conv1.register_forward_pre_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    model.set_checkpointing(encoder=True, plugins=True, head=True)
    model.set_max_memory(None)
    model(torch.randn(1, 3, 3, 28, 28)).depth.mean().backward()
    assert calls == {"enc": 2, "astt": 2, "head": 2}


@pytest.mark.parametrize(
    ("card_gib", "budget_mib", "channels_last"),
    [(141, 2048, True), (24, 1536, True), (8, 512, False), (2, 256, False)],
)
def test_the_budget_and_head_layout_follow_the_device(monkeypatch, card_gib, budget_mib, channels_last) -> None:
    """CPU keeps 64 MiB slices and NHWC convs; a GPU gets 1/16 of its memory (256 MiB to 2 GiB), NHWC from 1 GiB on."""
    from types import SimpleNamespace

    from gemdepth.models.chunking import DEFAULT_MAX_MEMORY, default_max_memory, tune_for_device

    model = mini("vda", [{"name": "astt"}])
    assert default_max_memory("cpu") == DEFAULT_MAX_MEMORY == 64 * 2**20
    model.head.channels_last = False
    tune_for_device(model, "cpu")
    assert {m.max_memory for m in budgeted_modules(model)} == {DEFAULT_MAX_MEMORY}
    assert model.head.channels_last is True  # oneDNN's NHWC convolutions are the faster ones on CPU

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=card_gib * 2**30))
    assert default_max_memory("cuda") == budget_mib * 2**20
    tune_for_device(model, "cuda:0")
    assert {m.max_memory for m in budgeted_modules(model)} == {budget_mib * 2**20}
    assert model.head.channels_last is channels_last


@pytest.mark.parametrize("host", ["dav2", "vda"])
def test_forward_frees_levels_3_and_4_before_the_full_resolution_stages(host: str) -> None:
    """``forward`` hands the encoder's tokens to decode/head (``release``): by the time the head runs
    its full-resolution output convolution, no one holds the level-3/4 tokens any more."""
    import weakref

    model = mini(host, [{"name": "gem"}, {"name": "astt"}] if host == "vda" else [])
    refs: list[weakref.ref] = []
    alive_at_output: list[list[bool]] = []
    real_encode = model.encode

    def encode(video: torch.Tensor) -> list:  # what forward hands to decode
        out = real_encode(video)
        refs.extend(weakref.ref(t) for t, _ in out)
        return out

    model.encode = encode  # type: ignore[method-assign]
    model.head.scratch.output_conv1.register_forward_pre_hook(
        lambda m, a: alive_at_output.append([r() is not None for r in refs])
    )
    video = torch.randn(1, 3, 3, 28, 42)
    with torch.inference_mode():
        depth = model(video).depth
        encoded = model.encode(video)
        kept = model.decode(encoded, 1, 3, 28, 42).depth  # default: the caller's list is left alone
    assert len(encoded) == 4 and torch.equal(kept, depth)
    if host == "vda":  # levels 3 and 4 are gone; 1 and 2 are still needed at full resolution
        assert alive_at_output[0] == [True, True, False, False]
    else:  # DAv2 without hooks runs every level per frame slice: levels 1, 2, 4 stay until the end,
        # level 3 was replaced by its skip map (skip_3) before the head ran
        assert alive_at_output[0] == [True, True, False, True]


def test_low_memory_mode_returns_freed_tensors_to_the_os() -> None:
    """After ``return_freed_memory()`` tensors ≥ 4 MB are their own mappings: freeing them lowers RSS at once,
    even between live ones (without it, glibc keeps such holes in its heap: 0 MB given back here)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import torch
        from gemdepth.models.chunking import return_freed_memory
        def rss():
            return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024
        big = torch.ones(10 * 2**20 // 4); del big   # glibc raises its dynamic mmap threshold past this size
        assert return_freed_memory()
        held = [torch.ones(6 * 2**20 // 4) for _ in range(60)]   # 360 MB in 6 MB tensors
        before = rss(); del held[::2]; after = rss()              # free every other one (a fragmented heap)
        print(before - after)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode and "AssertionError" in out.stderr and not sys.platform.startswith("linux"):
        pytest.skip("mallopt is glibc-only")
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 150  # of the 180 MB freed (glibc's heap would keep them: see below)


@pytest.mark.parametrize("query", [False, True])
@pytest.mark.parametrize("budget_heads", [1, 2, 3, 6])
def test_attention_in_head_groups_matches_the_plain_block(budget_heads: int, query: bool) -> None:
    """A clip-wide attention whose keys/values exceed the budget runs its heads in groups: a budget
    of ``budget_heads`` heads' keys and values gives ceil(6 / budget_heads) groups, each holding only
    its own heads' keys and values, and the same numbers as the plain (one-call) block, with
    qk-norm, 2-D RoPE and LayerScale, for all rows or for a few query rows (GEM's camera rows)."""
    from gemdepth.models.plugins.attention import Block
    from gemdepth.models.plugins.rope import grid_positions, rope_cos_sin

    torch.manual_seed(0)
    block = Block(48, 6, qk_norm=True, init_values=0.5).eval()  # head_dim 8
    frames, grid = 3, (4, 5)
    x = torch.randn(2, frames * 20, 48)
    rope = tuple(t.repeat(frames, 1) for t in rope_cos_sin(grid_positions(*grid), 8, 100.0))
    rows = torch.tensor([0, 20, 40, 7]) if query else None
    kv_shapes: list[tuple[int, ...]] = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        kv_shapes.append(tuple(k.shape))
        return real_sdpa(q, k, v, *args, **kwargs)

    with torch.inference_mode():
        block.max_memory = None
        ref = block(x, rope, rows)
        # keys + values (float32, head_dim 8, 60 rows) of budget_heads heads take half the budget; it
        # also slices the two sequences one at a time, except with query rows (one call on both)
        block.max_memory = 2 * budget_heads * (2 if query else 1) * 2 * 60 * 8 * 4
        torch.nn.functional.scaled_dot_product_attention = spy
        try:
            out = block(x, rope, rows)
        finally:
            torch.nn.functional.scaled_dot_product_attention = real_sdpa
    assert rel(out, ref) <= 1e-6
    heads_per_call = [shape[1] for shape in kv_shapes]
    assert max(heads_per_call) == min(budget_heads, 6) and sum(heads_per_call) >= 6


@pytest.mark.parametrize(("in_hw", "out_hw"), [((296, 392), (518, 686)), ((5, 7), (70, 98)), ((1, 1), (14, 14)),
                                               ((8, 10), (14, 14))])
def test_bilinear_rows_are_rows_of_interpolate(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    from gemdepth.models.dpt import bilinear_rows

    x = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(x, size=out_hw, mode="bilinear", align_corners=True)
    for start, stop in [(0, out_hw[0]), (3, out_hw[0] // 2 + 1), (out_hw[0] - 5, out_hw[0])]:
        band = bilinear_rows(x, out_hw, start, stop)
        assert band.shape == (2, 3, stop - start, out_hw[1])
        assert rel(band, ref[..., start:stop, :]) <= 1e-6


@pytest.mark.parametrize("host", ["dav2", "vda"])
def test_full_size_output_runs_in_bands_of_rows(host: str) -> None:
    """With a small budget the resampled full-size map and the convolutions after it exist a band of
    rows at a time (each band with its 3×3 halo), and the depth equals the one-call head's."""
    model = mini(host, [])
    video = torch.randn(1, 3, 3, 112, 84, generator=torch.Generator().manual_seed(2))
    heights: list[int] = []
    handle = model.head.scratch.output_conv2[0].register_forward_hook(
        lambda mod, inp, out: heights.append(inp[0].shape[-2]))
    with torch.inference_mode():
        model.set_max_memory(None)
        ref = model(video).depth
        assert heights == [112]
        heights.clear()
        model.set_max_memory(1)  # one frame per slice, 16-row bands
        out = model(video).depth
    handle.remove()
    assert heights == [18] * 7 * 3  # 7 bands of 16 rows per frame, each with a row of halo (zeros at the border)
    assert rel(out, ref) <= 1e-6


def test_inference_encode_projects_the_levels_no_plug_in_reads() -> None:
    """In inference ``encode`` returns levels 1-3 as the head's projected maps (GEM and ASTT read the
    last level only; without plug-ins all four are projected); with autograd the tokens as they are.
    ``decode`` takes both and gives the same depth."""
    model = mini("vda", PLUGIN_SETS["gem+astt"])
    video = torch.randn(1, 4, 3, 56, 70, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        compact = model.encode(video)
    assert [tuple(t.shape) for t, _ in compact] == [(4, 32, 4, 5), (4, 32, 4, 5), (4, 64, 4, 5), (4, 20, 64)]
    with torch.enable_grad():
        tokens = [(t.detach(), c.detach()) for t, c in model.encode(video)]
    assert all(t.shape == (4, 20, 64) for t, _ in tokens)
    with torch.no_grad():
        a = model.decode(compact, 1, 4, 56, 70).depth
        b = model.decode(tokens, 1, 4, 56, 70).depth
    assert rel(a, b) <= 1e-6
    with torch.no_grad():
        assert mini("dav2", []).early_projected_levels() == (0, 1, 2, 3)
        assert mini("vda", PLUGIN_SETS["astt-late"]).early_projected_levels() == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="decode expects 4"):
        model.decode(compact[:3], 1, 4, 56, 70)


@pytest.mark.parametrize("host", ["dav2", "vda"])
@pytest.mark.parametrize("plugins", ["none", "gem+astt", "astt-mid"])
def test_inference_shortcuts_equal_the_autograd_path(host: str, plugins: str) -> None:
    """Inference projects the unread levels while encoding and turns level 3 into its skip map before
    the plug-ins run (so the clip never holds that level's wide map while GEM/ASTT work); with autograd
    none of that happens. Both give the same depth."""
    model = mini(host, PLUGIN_SETS[plugins])
    video = torch.randn(1, 5, 3, 56, 70, generator=torch.Generator().manual_seed(4))
    order: list[str] = []
    handles = [model.head.scratch.layer3_rn.register_forward_hook(lambda *a: order.append("skip_3"))]
    handles += [p.register_forward_hook(lambda *a, n=name: order.append(n)) for name, p in model.plugins.items()]
    with torch.enable_grad():
        ref = model(video).depth.detach()
    autograd_order = list(order)
    order.clear()
    with torch.inference_mode():
        out = model(video).depth
    for h in handles:
        h.remove()
    assert rel(out, ref) <= (1e-5 if plugins == "astt-mid" else 1e-6)
    early = [n for n, p in model.plugins.items() if p.position == "early"]
    assert autograd_order[: len(early)] == early  # the head (and its skip map) after the plug-ins
    assert order[0] == "skip_3" and order[1: 1 + len(early)] == early


def test_block_in_place_equals_the_block_and_reuses_its_input() -> None:
    """``forward_inplace`` (GEM's frame block in inference) writes each slice of sequences over its
    input: the same tensor comes back, with the numbers of ``forward``; with autograd it is ``forward``."""
    from gemdepth.models.plugins.attention import Block

    torch.manual_seed(0)
    block = Block(48, 6, qk_norm=True, init_values=0.5).eval()
    x = torch.randn(5, 12, 48)
    with torch.inference_mode():
        block.max_memory = None
        ref = block(x)
        block.max_memory = 2 * 12 * 48 * 4 * 11  # two sequences per slice: three slices
        assert block.sequences_per_chunk(5, 12) == 2
        owned = x.clone()
        out = block.forward_inplace(owned)
    assert out is owned and rel(out, ref) <= 1e-6
    with torch.no_grad():  # no budget → the plain forward, a new tensor
        block.max_memory = None
        owned = x.clone()
        out = block.forward_inplace(owned)
    assert out is not owned and torch.equal(owned, x) and rel(out, ref) <= 1e-6


def test_astt_time_blocks_run_in_place_and_free_the_prepared_map() -> None:
    """In inference the ASTT time blocks gather each patch's time sequence from the ``(B, T·L, C)`` map
    and write it back (no reordered clip-sized copies), and the prepared map is freed once the first
    spatial block has replaced it (the plug-in's caller holds no reference while it mixes)."""
    import weakref

    from gemdepth.models.plugins.astt import ASTT
    from gemdepth.models.types import VideoFeatures

    torch.manual_seed(0)
    frames, (gh, gw), dim = 4, (3, 5), 64
    tokens = torch.randn(frames, gh * gw, dim)
    # temporal-only: the mix is one storage from start to end
    astt = ASTT(dim, spatial=False).eval()
    with torch.no_grad():
        ref = astt.mix(astt.prepare(tokens, 1, frames), 1, frames, gh, gw)  # autograd-free one-call path
        for blk in astt.time_blocks:
            blk.max_memory = 3 * frames * 4 * (3 * dim + 2 * 4 * dim)  # 3 patches per slice
        prepared = astt.prepare(tokens, 1, frames)
        ptr = prepared.data_ptr()
        out = astt.mix([prepared], 1, frames, gh, gw)
    assert out.data_ptr() == ptr and rel(out, ref) <= 1e-6

    astt = ASTT(dim).eval()
    prepared_refs: list[weakref.ref] = []
    alive: list[bool] = []
    real_prepare = astt.prepare

    def prepare(*args: object) -> torch.Tensor:
        out = real_prepare(*args)  # type: ignore[arg-type]
        prepared_refs.append(weakref.ref(out))
        return out

    astt.prepare = prepare  # type: ignore[method-assign]
    astt.time_blocks[0].register_forward_pre_hook(lambda m, a: alive.append(prepared_refs[-1]() is not None))
    feats = VideoFeatures(tokens=[tokens] * 4, cls=[tokens[:, 0]] * 4, batch=1, frames=frames, patch_h=gh,
                          patch_w=gw, image_h=14 * gh, image_w=14 * gw)
    with torch.inference_mode():
        astt(feats)
    assert alive and not any(alive)


def test_release_free_heap_gives_back_what_a_fragmented_heap_keeps() -> None:
    """Between stages of a large CPU window, ``release_free_heap`` returns the heap's free pages: after
    freeing every other 6 MB tensor (holes glibc keeps resident), RSS drops by most of the 180 MB.
    Small maps, autograd and other devices leave the allocator alone."""
    import subprocess
    import sys
    import textwrap

    from gemdepth.models.chunking import RELEASE_MIN_BYTES, release_free_heap

    assert not release_free_heap(torch.zeros(8))  # too small to matter
    with torch.enable_grad():
        assert not release_free_heap(torch.zeros(RELEASE_MIN_BYTES // 4, requires_grad=True))
    assert not release_free_heap(torch.zeros(RELEASE_MIN_BYTES // 4, device="meta"))
    code = textwrap.dedent(
        """
        import torch
        from gemdepth.models.chunking import release_free_heap
        def rss():
            return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024
        big = torch.ones(10 * 2**20 // 4); del big   # glibc raises its dynamic mmap threshold past 6 MB
        held = [torch.ones(6 * 2**20 // 4) for _ in range(60)]   # 360 MB in 6 MB tensors, on the heap
        keep = held[1::2]; del held                                # every other one freed: holes
        stage_map = torch.ones(48 * 2**20 // 4)                    # a 48 MB map: large enough to release
        before = rss()
        with torch.inference_mode():
            released = release_free_heap(stage_map)
        print(released, before - rss(), sum(t.sum().item() for t in keep) == 30 * 6 * 2**20 / 4)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    released, freed_mb, intact = out.stdout.split()
    if released == "False" and not sys.platform.startswith("linux"):
        pytest.skip("malloc_trim is glibc-only")
    assert released == "True" and intact == "True"
    assert int(freed_mb) >= 150, out.stdout  # of the 180 MB in holes (without it: 0, see the low-memory test)


def test_stages_in_budget_sized_slices_release_the_heap_once_at_their_start(monkeypatch) -> None:
    """A stage that runs in several slices of a large budget hands the heap back before its first
    slice, whatever the size of its map (its slices churn a budget's worth each); later slices reuse
    the first one's holes, so they do not (page faults cost time). Small budgets and single small
    slices leave the allocator alone."""
    import gemdepth.models.chunking as chunking

    calls: list[int] = []
    monkeypatch.setattr(chunking, "malloc_trim", lambda: calls.append(1) or True)
    small = torch.zeros(1024)
    with torch.inference_mode():
        assert chunking.release_between_slices(small, True, 64 * 2**20)
        assert not chunking.release_between_slices(small, False, 64 * 2**20)
        assert not chunking.release_between_slices(small, True, 8 * 2**20)
        assert chunking.release_between_slices(small, False, None, nbytes=chunking.RELEASE_MIN_BYTES)
    assert len(calls) == 2

    head = mini("vda", [])
    head.head.max_memory = 64 * 2**20
    calls.clear()
    rows = torch.zeros(6, 4)
    with torch.inference_mode():
        out = head.head._map(lambda t: t + 1, 6, 2, rows)  # 3 slices of a 64 MiB budget: one release
    assert torch.equal(out, rows + 1) and len(calls) == 1
    calls.clear()
    with torch.inference_mode():
        head.head._map(lambda t: t + 1, 6, 6, rows)  # one small slice: none
    assert not calls
