"""The CPU benchmark scripts' own logic on tiny inputs (their figures come from real runs, never from tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import cpu_kernels
import cpu_kernels_ab
import flux_cpu_step
import peer_ggml

sys.path.remove(str(BENCH))


def test_cpu_kernels_sides_compute_the_same_product_and_are_timed():
    k, n, m = 96, 40, 5
    sides = cpu_kernels.build_sides(k, n, m, 1 << 16, cpu_kernels.SIDES)
    assert set(sides) == set(cpu_kernels.SIDES)
    for side in sides.values():
        assert len(side.weights) >= 2 and side.weights[0] is not side.weights[1]  # distinct copies cycled
    # the float sides and the ternary sides compute one product (same codes, scales and activations)
    ref = sides["torch_fp32"].call().double()
    for name in ("torch_bf16", "ternary_a16", "ternary_a16_fp32", "ternary_a8"):
        out = sides[name].call().double()
        assert float((out - ref).norm() / ref.norm()) < (0.02 if name == "ternary_a8" else 0.01), name
    res = cpu_kernels.measure(sides, repeats=2)
    assert set(res) == set(cpu_kernels.SIDES)
    assert all(r["median_ms"] > 0 and r["samples"] == 2 for r in res.values())
    table = cpu_kernels.summary_table({"results": [{"K": k, "N": n, "M": m, "sides": {
        name: dict(r, speedup_vs_bf16=res["torch_bf16"]["median_ms"] / r["median_ms"]) for name, r in res.items()}}]})
    assert f"| {k} -> {n} | {m} |" in table and table.count("x |") >= 1


def test_cycle_covers_at_least_128_mib_and_twice_the_l3():
    assert cpu_kernels.cycle_bytes() >= max(128 << 20, 2 * cpu_kernels.l3_bytes())


def test_flux_step_extrapolation_per_unit():
    rows = [{"variant": v, "units": u, "step_s": t, "weight_bytes": w, "peak_rss_bytes": w + 10}
            for v, u, t, w in (("bf16", 2, 3.0, 200), ("bf16", 4, 5.0, 400), ("ternary_int8", 2, 2.0, 30),
                               ("ternary_int8", 4, 2.5, 50), ("ternary_int8", 19, 6.0, 200))]
    s = flux_cpu_step.summarize(rows)
    assert s["bf16_per_unit_s"] == 1.0 and s["bf16_full_extrapolated_s"] == 3.0 + 17 * 1.0
    assert s["ternary_int8_speedup_vs_bf16_full"] == pytest.approx(20.0 / 6.0)
    assert s["ternary_int8_speedup_vs_bf16_per_unit"] == pytest.approx(1.0 / 0.25)
    assert s["bf16_full_weight_bytes"] == 200 + 100 * 17 and s["bf16_full_rss_needed_bytes"] == 1900 + 10


def test_flux_step_cut_configs_keep_the_block_shapes():
    full = flux_cpu_step.config_for(flux_cpu_step.FULL_UNITS)
    from torch_ternary.testing.flux import FLUX_DEV_CONFIG

    assert full == FLUX_DEV_CONFIG  # 19 double + 38 single blocks: 19 units
    cut = flux_cpu_step.config_for(2)
    assert (cut["num_layers"], cut["num_single_layers"]) == (2, 4)
    assert {k: v for k, v in cut.items() if "layers" not in k} == {k: v for k, v in full.items() if "layers" not in k}


def test_peer_build_without_a_source_tree_fails_cleanly(tmp_path):
    log = tmp_path / "build.log"
    assert peer_ggml.build(tmp_path / "no-llama.cpp", tmp_path / "out", log) is None
    assert log.exists() and log.read_text()


def test_torch_int_mm_side_uses_int8_weights():
    sides = cpu_kernels.build_sides(64, 32, 17, 1 << 14, ["torch_int_mm"])
    side = sides["torch_int_mm"]
    assert side.weights[0].dtype == torch.int8 and side.call().dtype == torch.int32


def test_flux_step_rounds_warm_every_run_at_full_size_and_extrapolate():
    """``interleaved``'s timing loop: every run warmed on the small and the full-size input, then timed once a
    round; the bf16 full step extrapolated from the two cuts' medians."""
    calls: dict[str, list[int]] = {}

    class Fake(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.setdefault(self.name, []).append(x.numel())
            return x * 2

    models = {k: Fake(k) for k in ("ternary_full", "bf16_2", "bf16_4")}
    out = flux_cpu_step._rounds(models, {"x": torch.ones(8)}, {"x": torch.ones(1)}, rounds=3)
    assert {k: len(v) for k, v in out["seconds"].items()} == dict.fromkeys(
        ("ternary_int8", "ternary_16bit", "bf16_2", "bf16_4"), 3)
    assert calls["ternary_full"] == [1, 8, 1, 8] + [8] * 6 and calls["bf16_2"] == [1, 8] + [8] * 3
    med = out["median_s"]
    assert out["bf16_full_extrapolated_s"] == pytest.approx(
        med["bf16_2"] + (med["bf16_4"] - med["bf16_2"]) / 2 * (flux_cpu_step.FULL_UNITS - 2))
    assert out["ternary_int8_speedup_vs_bf16_full"] == pytest.approx(out["bf16_full_extrapolated_s"] / med["ternary_int8"])


def test_ab_reads_each_revisions_chunk_settings():
    text = cpu_kernels_ab.revision_file("HEAD", "torch_ternary/kernels/cpu/__init__.py")
    got = cpu_kernels_ab.chunk_settings(text)
    assert set(got) == {"AMX_CHUNK_ROWS", "AMX_BF16_CHUNK_TOKENS"} and all(v >= 32 for v in got.values())
    assert cpu_kernels_ab.chunk_settings("AMX_CHUNK_ROWS = 96\nAMX_BF16_CHUNK_TOKENS = 64\n") == {
        "AMX_CHUNK_ROWS": 96, "AMX_BF16_CHUNK_TOKENS": 64}
    with pytest.raises(ValueError, match="AMX_CHUNK_ROWS"):
        cpu_kernels_ab.chunk_settings("nothing here")


@pytest.mark.parametrize("isa", ["amx", "avx512", "avx2"])
def test_ab_sides_compute_one_product(isa):
    from torch_ternary.kernels import cpu

    if isa not in cpu.available_isas():
        pytest.skip(f"needs {isa}")
    module = cpu.load()
    builds = {"base": (module, {"AMX_CHUNK_ROWS": 64, "AMX_BF16_CHUNK_TOKENS": 32}),
              "new": (module, {"AMX_CHUNK_ROWS": cpu.AMX_CHUNK_ROWS, "AMX_BF16_CHUNK_TOKENS": cpu.AMX_BF16_CHUNK_TOKENS})}
    sides = cpu_kernels_ab.sides_for(200, 70, 150, builds, a16=True, fp32=True, isa=isa, torch_fp32=True)
    assert set(sides) == {"torch_bf16", "torch_fp32", "a8_base", "a8_new", "a16_base", "a16_new", "fp32_base",
                          "fp32_new", "fp32_reference"}
    ref = sides["torch_fp32"].call().double()
    assert float((sides["torch_bf16"].call().double() - ref).norm() / ref.norm()) < 0.01
    assert torch.equal(sides["a8_base"].call(), sides["a8_new"].call())  # chunks change nothing in int8
    for name in ("a8_new", "a16_base", "a16_new", "fp32_base", "fp32_new", "fp32_reference"):
        out = sides[name].call().double()
        assert float((out - ref).norm() / ref.norm()) < (0.02 if name.startswith("a8") else 0.01), name
