"""The converter benchmark runs and reports its figures (numbers are for `make perf`)."""
import pytest

from perf import bench_converter


@pytest.mark.slow
def test_bench_converter_quick(tmp_path):
    figs = bench_converter.run(tmp_path, quick=True, repeats=1)
    for name in ("converter_vs_io_floor", "converter_vs_polygons", "converter_core_scaling",
                 "converter_slices_per_s_1core", "io_floor_slices_per_s_1core",
                 "polygons_slices_per_s_1core"):
        assert figs[name]["value"] > 0, name
    # RLE needs no contour tracing: it must beat the polygon approach
    assert figs["converter_vs_polygons"]["value"] > 1
