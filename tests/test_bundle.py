"""What the offline bundle holds (perf/bundle.py): lungbench's run-time requirement closure less
what the GPU machine already has, markers evaluated for the target Python."""

from __future__ import annotations

from importlib import metadata

import pytest

from perf import bundle

# a small world: name -> Requires-Dist (None: not installed here)
WORLD = {
    "lungbench-app": None,
    "torch": ["filelock", "typing-extensions>=4.10", 'nvidia-cudnn==9.1; platform_system == "Linux"'],
    "filelock": [], "typing-extensions": [], "nvidia-cudnn": [],
    "numpy": [],
    "hydra-core": ["omegaconf<2.4,>=2.2", "antlr4-python3-runtime==4.9.*",
                   'importlib-resources; python_version < "3.9"', "packaging"],
    "omegaconf": ["antlr4-python3-runtime==4.9.*", "PyYAML>=5.1.0"],
    "antlr4-python3-runtime": [], "packaging": [], "pyyaml": [],
    "nibabel": ["importlib-resources>=5.12; python_version < '3.12'", "numpy>=1.25"],
    "importlib-resources": [],
    "monai": ["torch>=2.8.0", "numpy<3.0,>=1.24", 'einops; extra == "all"'],
    "fvcore": ["numpy", "iopath>=0.1.7", "tabulate"],
    "iopath": ["portalocker", "typing_extensions"], "portalocker": [], "tabulate": [],
    "matplotlib": ["packaging", "numpy"],
    "detectron2": ["fvcore<0.1.6,>=0.1.5", "hydra-core>=1.1", "matplotlib", 'shapely; extra == "all"'],
}


def requires(name):
    return WORLD.get(name)


@pytest.fixture
def pyproject(tmp_path):
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\nname = "x"\ndependencies = ["numpy>=1.26,<3", "hydra-core==1.3.8", '
                 '"nibabel>=5.2", "monai>=1.4", "torch>=2.11,<2.15", "Fvcore>=0.1.5"]\n'
                 '[project.optional-dependencies]\ndev = ["pytest>=8"]\n')
    return p


def test_the_bundle_is_what_the_target_lacks(pyproject):
    lack = bundle.lacks(["torch", "numpy", "matplotlib", "pyyaml"], "3.12", pyproject, requires)
    assert sorted(lack) == ["antlr4-python3-runtime", "detectron2", "fvcore", "hydra-core", "iopath",
                            "monai", "nibabel", "omegaconf", "portalocker", "tabulate"]
    # packaging and typing-extensions come with the target's matplotlib and torch; extras and
    # markers of other Pythons (importlib-resources below 3.12) stay out; no dev extras (pytest)
    lack311 = bundle.lacks(["torch", "numpy", "matplotlib", "pyyaml"], "3.11", pyproject, requires)
    assert set(lack311) - set(lack) == {"importlib-resources"}
    # both requirements naming fvcore, whatever their spelling
    assert sorted(lack["fvcore"]) == ["Fvcore>=0.1.5", "fvcore<0.1.6,>=0.1.5"]


def test_pins_take_the_tested_versions():
    lines = bundle.pins({"hydra-core": ["hydra-core==1.3.8"], "shapely": ["shapely>=2", "shapely<3"]},
                   version=lambda n: {"hydra-core": "1.3.8"}.get(n))
    assert lines == ["hydra-core==1.3.8", "shapely<3,>=2"]


def test_names_are_compared_normalised():
    assert bundle.canon("Foo_Bar.baz") == "foo-bar-baz" == bundle.canon("foo-bar-baz")
    c = bundle.closure(["Typing_Extensions>=4"], lambda n: [] if n == "typing-extensions" else None, None)
    assert list(c) == ["typing-extensions"]


def test_this_environment_lacks_nothing_and_the_target_what_it_should():
    """Here (.venv) everything is installed; the real target lacks lungbench's own stack only."""
    assert bundle.missing() == []
    lack = bundle.lacks(bundle.TARGET_HAS, "3.12")
    for name in ("detectron2", "hydra-core", "omegaconf", "fvcore", "iopath", "pycocotools",
                 "faster-coco-eval", "nibabel", "monai", "submitit", "joblib"):
        assert name in lack
    for name in ("torch", "torchvision", "numpy", "scipy", "pillow", "packaging", "nvidia-cudnn-cu13",
                 "pytest", "simpleitk", "pytest-timeout", "lungbench", "setuptools"):
        assert name not in lack
    for line in bundle.pins(lack):
        name, _, version = line.partition("==")
        assert version == metadata.version(name)
