"""Initial weights: files in the public formats load into the trunk tensor for tensor, what does
not fit is re-initialised and named in result.json, and a file that is no checkpoint or does not
fit the backbone fails the run with a message naming the file and the first tensor.

Every weight file is built here, in the format of the public files, from a real detectron2
model built with the harness's own config (CPU): a model-zoo ``.pkl`` (detectron2 names, COCO's
80-class heads), an ImageNet trunk ``.pkl`` in Caffe2 names as ``R-50.pkl`` has them, and the
``model_final.pth`` a lungbench run keeps. zoo/imagenet files are found where iopath caches the
backbone's URL (a temp ``$FVCORE_CACHE``, ``weights.download=false``); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.training.config import (DOWNLOAD_TIMEOUT_S, WeightsMismatch, WeightsUnavailable, build_d2_cfg,
                                       cache_path, compose, fetch_weights, resolve_weights, to_https)
from benchmark.training.weights import NOTES_FILE, load_initial_weights, trunk_keys
from contracts.result import read_result, validate
from benchmark.training.run import run

REPO = Path(__file__).resolve().parent.parent

# pycocotools' encode/decode on numpy 2 (not ours): one warning per mask
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# COCO's heads as the zoo checkpoints have them; our model has 3 classes
COCO_HEADS = ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
              "roi_heads.mask_head.predictor")
TRUNK = "backbone.bottom_up."  # R50-FPN's ResNet
R50_ZOO_URL = ("https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
               "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl")
# few RoIs and proposals, no loader workers: a run of R50-FPN on the 64 px phantom takes seconds
SMALL = ["device=cpu", "measure.flops=false", "solver.num_workers=0", "solver.input_size=dataset",
         "solver.roi_batch_size_per_image=16", "solver.detections_per_image=20",
         "solver.rpn_topk={pre_train:200,post_train:50,pre_test:100,post_test:25}"]


# ----------------------------------------------------------------------------- weight files


def build(overrides=(), num_classes: int | None = None) -> torch.nn.Module:
    """A detectron2 model (CPU) from the harness's config: compose + build_d2_cfg + build_model."""
    from detectron2.modeling import build_model

    opts = [f"d2_opts=[MODEL.ROI_HEADS.NUM_CLASSES,{num_classes}]"] if num_classes else []
    cfg = compose(["dataset_dir=/unused", "device=cpu", *overrides, *opts])
    d2 = build_d2_cfg(cfg, train_name="unused_train", test_name="unused_test",
                      output_dir="/unused", device="cpu", image_hw=(64, 64))
    return build_model(d2).eval()


def trained_like(state: dict, seed: int) -> dict[str, np.ndarray]:
    """Values no fresh model has: the init plus noise (float32 numpy, as the public .pkl files);
    norm scales and variances kept positive so a run from them trains like a pretrained one."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in state.items():
        a = v.detach().cpu().numpy().astype(np.float32)
        if k.endswith("running_var"):
            a = rng.uniform(0.5, 2.0, a.shape)
        elif k.endswith("norm.weight"):
            a = rng.uniform(0.5, 1.5, a.shape)
        else:
            a = a + rng.normal(0.0, 0.01, a.shape)
        out[k] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def write_zoo_pkl(path: Path, overrides=("weights=zoo",), seed: int = 1) -> dict[str, np.ndarray]:
    """A model-zoo checkpoint: {"model": {detectron2 name: ndarray}, "__author__": ...}, with
    COCO's 80-class heads. Returns its tensors."""
    state = trained_like(build(overrides, num_classes=80).state_dict(), seed)
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 81
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 320
    assert state["roi_heads.mask_head.predictor.weight"].shape[0] == 80
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    return state


def c2_name(key: str) -> str:
    """detectron2 trunk name (relative to the ResNet) -> Caffe2 name, as R-50.pkl spells it:
    the inverse of detectron2's convert_basic_c2_names for the ResNet's tensors."""
    parts = key.split(".")
    leaf = {"weight": "w", "bias": "b"}
    bn = {"weight": "s", "bias": "b"}
    if parts[0] == "stem":  # stem.conv1.weight, stem.conv1.norm.{weight,bias}
        return "res_conv1_bn_" + bn[parts[3]] if parts[2] == "norm" else "conv1_" + leaf[parts[2]]
    stage, block, conv = parts[:3]
    branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b",
              "conv3": "branch2c"}[conv]
    base = f"{stage}_{block}_{branch}"
    return f"{base}_bn_{bn[parts[4]]}" if parts[3] == "norm" else f"{base}_{leaf[parts[3]]}"


def rel(key: str) -> str:
    """A trunk key relative to the ResNet: backbone.bottom_up.X (FPN), backbone.X (C4, DC5) and
    roi_heads.res5.X (C4's res5) -> X, as the ImageNet file names the stages."""
    return re.sub(r"^(backbone\.bottom_up\.|backbone\.|roi_heads\.)", "", key)


def write_imagenet_pkl(path: Path, layout: str = "flat", seed: int = 2,
                       overrides=("weights=imagenet",)) -> dict[str, np.ndarray]:
    """An ImageNet trunk in Caffe2 names: conv weights and the folded BatchNorm's scale/shift
    (``_bn_s``/``_bn_b``, no running statistics) plus the 1000-class classifier. ``flat``: a
    plain dict of blobs, as the public ImageNet files; ``tagged``: the form detectron2 turns
    Caffe2 files into ({"model", "__author__": "Caffe2", "matching_heuristics"}).
    Returns {model key: ndarray} for the trunk tensors it holds."""
    from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names

    model = build(overrides)
    state = model.state_dict()
    trunk = {k: state[k] for k in trunk_keys(model)
             if not k.endswith(("running_mean", "running_var"))}
    values = trained_like(trunk, seed)
    blobs = {c2_name(rel(k)): a for k, a in values.items()}
    # the names really are what detectron2 maps back to the model's
    assert convert_basic_c2_names(list(blobs)) == [rel(k) for k in values]
    rng = np.random.default_rng(seed)
    blobs["fc1000_w"] = rng.normal(0, 0.01, (1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    data = blobs if layout == "flat" else {"model": blobs, "__author__": "Caffe2",
                                           "matching_heuristics": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return values


def same(t: torch.Tensor, a: np.ndarray) -> bool:
    return tuple(t.shape) == a.shape and torch.equal(t.detach().cpu(), torch.from_numpy(a))


def assert_trunk_is_file(state: dict, file_state: dict, prefix: str = TRUNK) -> int:
    """Every trunk tensor of ``state`` equals the file's, key by key. Returns how many."""
    keys = [k for k in state if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    assert len(keys) > 250  # R50: stem + 16 blocks, 5 tensors per conv
    for k in keys:
        assert k in file_state, f"{k} not in the file"
        assert same(state[k], file_state[k]), f"{k} differs from the file"
    return len(keys)


def assert_imagenet_trunk(state: dict, values: dict, trunk: list[str]) -> None:
    """The trunk holds the Caffe2 file's tensors; the FrozenBN statistics the file lacks are
    the identity (mean 0, variance 1), as detectron2 fills them in for the public file."""
    assert len(trunk) > 250
    for k in trunk:
        if k.endswith("running_mean"):
            assert torch.equal(state[k], torch.zeros_like(state[k])), k
        elif k.endswith("running_var"):
            assert torch.equal(state[k], torch.ones_like(state[k])), k
        else:
            assert same(state[k], values[k]), f"{k} differs from the file's {c2_name(rel(k))}"


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------- loading (no training)


def test_zoo_pkl_loads_trunk_and_reinitialises_coco_heads(tmp_path):
    file_state = write_zoo_pkl(tmp_path / "model_final.pkl")
    model = build(["weights=zoo"])
    before = snapshot(model)
    report = load_initial_weights(model, str(tmp_path / "model_final.pkl"))
    after = snapshot(model)
    assert_trunk_is_file(after, file_state)
    heads = [k for k in after if k.startswith(COCO_HEADS)]
    assert len(heads) == 6
    for k in after:
        if k in heads:  # re-initialised: the model's own initialisation, not the file's
            assert torch.equal(after[k], before[k]) and after[k].shape != file_state[k].shape, k
        else:  # FPN, RPN, box and mask heads' other layers: the file's
            assert same(after[k], file_state[k]), k
    assert sorted(k for k, _, _ in report.reinitialised) == sorted(heads)
    assert report.missing == [] and report.unexpected == []
    (note,) = report.notes()
    assert "re-initialised" in note and all(h in note for h in COCO_HEADS)
    assert "81x1024 in the file, 4x1024 in the model" in note  # 3 classes + background
    assert TRUNK not in note


@pytest.mark.parametrize("layout", ["flat", "tagged"])
def test_imagenet_c2_pkl_loads_trunk_under_detectron2_names(tmp_path, layout):
    values = write_imagenet_pkl(tmp_path / "R-50.pkl", layout)
    model = build(["weights=imagenet"])
    trunk = trunk_keys(model)
    assert trunk[0] == TRUNK + "stem.conv1.weight" and all(k.startswith(TRUNK) for k in trunk)
    before = snapshot(model)
    report = load_initial_weights(model, str(tmp_path / "R-50.pkl"))
    after = snapshot(model)
    assert_imagenet_trunk(after, values, trunk)
    for k in after:
        if not k.startswith(TRUNK):  # no heads in the file: all keep their initialisation
            assert torch.equal(after[k], before[k]), k
    assert report.reinitialised == []
    assert not any(k.startswith(TRUNK) for k in report.missing)
    notes = report.notes()
    fresh = next(n for n in notes if "not in the file" in n)
    assert "backbone.fpn_lateral2" in fresh and "proposal_generator" in fresh
    assert re.search(r"\broi_heads\b(?!\.)", fresh)  # the whole module, not its 20 tensors
    assert any("fc1000" in n and "ignored" in n for n in notes)


def test_imagenet_res5_lands_in_c4_roi_heads(tmp_path):
    """C4: res5 is part of the RoI heads, and of the trunk the file must fit."""
    values = write_imagenet_pkl(tmp_path / "R-50.pkl", overrides=["weights=imagenet",
                                                                  "backbone=r50_c4"])
    model = build(["weights=imagenet", "backbone=r50_c4"])
    trunk = trunk_keys(model)
    assert {rel(k).split(".")[0] for k in trunk} == {"stem", "res2", "res3", "res4", "res5"}
    assert {k.split(".")[0] for k in trunk if rel(k).startswith("res5.")} == {"roi_heads"}
    assert "roi_heads.res5.0.conv1.weight" in values
    report = load_initial_weights(model, str(tmp_path / "R-50.pkl"))
    assert_imagenet_trunk(model.state_dict(), values, trunk)
    assert not any(k in report.missing for k in trunk)


def test_scratch_loads_nothing():
    assert load_initial_weights(build(), "") is None


def _random_bytes(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(4096))


def _pickled_list(p: Path) -> None:
    p.write_bytes(pickle.dumps([1, 2, 3]))


def _torch_list(p: Path) -> None:
    torch.save([torch.zeros(3)], p)


def _strings(p: Path) -> None:
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": "not a tensor"}}, p)


NOT_CHECKPOINTS = {"random.pkl": _random_bytes, "random.pth": _random_bytes,
                   "list.pkl": _pickled_list, "list.pth": _torch_list, "strings.pth": _strings}


@pytest.mark.parametrize("name", sorted(NOT_CHECKPOINTS))
def test_not_a_checkpoint_is_refused(tmp_path, name):
    path = tmp_path / name
    NOT_CHECKPOINTS[name](path)
    with pytest.raises(WeightsMismatch, match="not a checkpoint") as e:
        load_initial_weights(build(["weights=zoo"]), str(path))
    assert str(path) in str(e.value)


def test_r50_imagenet_into_x101_names_first_mismatch(tmp_path):
    write_imagenet_pkl(tmp_path / "R-50.pkl")
    with pytest.raises(WeightsMismatch) as e:
        load_initial_weights(build(["weights=imagenet", "backbone=x101_fpn"]),
                             str(tmp_path / "R-50.pkl"))
    msg = str(e.value)
    # stem and res2.0's shortcut have the same shapes in R50 and X101-32x8d; res2.0.conv1 not
    assert msg.startswith(f"{tmp_path / 'R-50.pkl'}: its trunk does not fit")
    assert "first: backbone.bottom_up.res2.0.conv1.weight: the file's res2.0.conv1.weight is " \
           "64x64x1x1, the model's 256x64x1x1" in msg


def test_deeper_trunk_into_shallower_is_refused(tmp_path):
    """R101 weights cover every R50 tensor, shapes and all; res4.6-22 make it another trunk."""
    write_zoo_pkl(tmp_path / "r101.pkl", ["weights=zoo", "backbone=r101_fpn"])
    with pytest.raises(WeightsMismatch, match=r"first: backbone\.bottom_up\.res4\.6\.\S+: in "
                                              r"the file, but the model's trunk has no such"):
        load_initial_weights(build(["weights=zoo"]), str(tmp_path / "r101.pkl"))


def test_frozen_bn_file_into_groupnorm_trunk_says_why(tmp_path):
    """weights.path takes the trunk norm from the weights group: scratch is GroupNorm."""
    write_zoo_pkl(tmp_path / "zoo.pkl")
    with pytest.raises(WeightsMismatch, match=r"norm\.running_mean: in the file.*weights=zoo"):
        load_initial_weights(build(["weights=scratch"]), str(tmp_path / "zoo.pkl"))


# ------------------------------------------------------------------ failing runs (no training)


def test_r50_zoo_file_into_x101_fails_the_run(tiny_dataset, tmp_path, capsys):
    path = tmp_path / "r50_zoo.pkl"
    write_zoo_pkl(path)
    cfg = compose([f"dataset_dir={tiny_dataset}", "solver=smoke", *SMALL, "backbone=x101_fpn",
                   "weights=zoo", f"weights.path={path}"])
    assert run(cfg, tmp_path / "run") == 1
    r = read_result(tmp_path / "run").data
    assert validate(r) == [] and r["status"] == "failed"
    assert r["error"]["type"] == "WeightsMismatch" and r["error"]["where"] == "load checkpoint"
    msg = r["error"]["message"]
    assert str(path) in msg and "first: backbone.bottom_up.res2.0.conv1.weight: shape 64x64x1x1 " \
                                "in the file, 256x64x1x1 in the model" in msg
    assert r["weights"] == str(path)
    err = capsys.readouterr().err
    assert "FAILED at load checkpoint: WeightsMismatch" in err and "Traceback" not in err
    assert not list((tmp_path / "run").rglob("model_*.pth"))  # nothing trained


def cli(args: list[str], cache: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, FVCORE_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "benchmark.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_not_a_checkpoint_fails_the_cli_run(tiny_dataset, tmp_path):
    path = tmp_path / "model_final.pth"
    _random_bytes(path)
    p = cli([f"dataset_dir={tiny_dataset}", "solver=smoke", *SMALL, "weights=zoo",
             f"weights.path={path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "cache")
    assert p.returncode == 1, p.stderr[-3000:]
    r = read_result(tmp_path / "run").data
    assert r["status"] == "failed" and r["error"]["type"] == "WeightsMismatch"
    assert r["error"]["message"].startswith(f"{path}: not a checkpoint")
    assert f"WeightsMismatch: {path}: not a checkpoint" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout


# ------------------------------------------------------------------------------------ offline


def test_offline_missing_file_is_one_clear_error(tiny_dataset, tmp_path):
    """weights.download=false and nothing cached: the error names the URL and the cache file to
    place it at, no traceback is printed, nothing is built."""
    cache = tmp_path / "cache"
    p = cli([f"dataset_dir={tiny_dataset}", "solver=paper", *SMALL, "weights=zoo",
             "weights.download=false", f"hydra.run.dir={tmp_path / 'run'}"], cache, timeout=60)
    assert p.returncode == 1, p.stderr[-3000:]
    r = read_result(tmp_path / "run").data
    assert validate(r) == [] and r["status"] == "failed"
    assert r["error"]["type"] == "WeightsUnavailable" and r["error"]["where"] == "check weights"
    target = str(cache / "detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/"
                         "model_final_f10217.pkl")
    msg = r["error"]["message"]
    assert R50_ZOO_URL in msg and f"place it at {target}" in msg
    assert R50_ZOO_URL in p.stderr and target in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert not cache.exists()  # nothing fetched, nothing created
    assert not (tmp_path / "run" / "d2").exists()


def test_no_network_is_the_same_clear_error(tmp_path, monkeypatch):
    """download=true without a network: iopath's download fails at once (a socket timeout is
    set for it, so a silent network cannot hang the run) and the error names URL and cache."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    seen = []

    def no_network(url, *args, **kwargs):
        seen.append((url, socket.getdefaulttimeout()))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    before = socket.getdefaulttimeout()
    w = resolve_weights(compose(["dataset_dir=/x", "weights=zoo"]))
    with pytest.raises(WeightsUnavailable) as e:
        fetch_weights(w, download=True)
    assert seen == [(R50_ZOO_URL, DOWNLOAD_TIMEOUT_S if before is None else before)]
    assert socket.getdefaulttimeout() == before  # the process's own setting, back
    msg = str(e.value)
    assert R50_ZOO_URL in msg and str(cache_path(R50_ZOO_URL)) in msg and "offline?" in msg
    assert not cache_path(R50_ZOO_URL).exists()


# ----------------------------------------------------------------------- runs (a few iterations)


def spy_on_loading(monkeypatch) -> list[dict]:
    """The model's tensors right after the harness loads the initial weights, before any step."""
    loaded: list[dict] = []
    real = load_initial_weights

    def spy(model, path):
        report = real(model, path)
        loaded.append(snapshot(model))
        return report

    monkeypatch.setattr("benchmark.training.weights.load_initial_weights", spy)
    return loaded


@pytest.fixture(scope="module")
def paper_run(tiny_dataset, tmp_path_factory):
    """solver=paper weights=zoo from a zoo file in the cache, 2 iterations, checkpoint kept."""
    tmp = tmp_path_factory.mktemp("paper")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVCORE_CACHE", str(tmp / "cache"))
        cached = cache_path(R50_ZOO_URL)
        assert cached == tmp / "cache/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/" \
                         "137849600/model_final_f10217.pkl"
        file_state = write_zoo_pkl(cached)
        loaded = spy_on_loading(mp)
        cfg = compose([f"dataset_dir={tiny_dataset}", "solver=paper", "weights=zoo",
                       "weights.download=false", *SMALL, "solver.max_iter=2",
                       "keep_checkpoint=true"])
        rc = run(cfg, tmp / "run")
    return {"rc": rc, "run_dir": tmp / "run", "cached": cached, "file_state": file_state,
            "loaded": loaded}


@pytest.mark.slow
def test_paper_protocol_from_zoo_file(paper_run):
    assert paper_run["rc"] == 0
    r = read_result(paper_run["run_dir"]).data
    assert validate(r) == [] and r["status"] == "ok" and r["weights"] == "zoo"
    assert r["solver"]["name"] == "paper" and r["resumed_from_iter"] == 0
    # the zoo config's trunk as the paper trained it: frozen BatchNorm, FREEZE_AT 2, its LR
    d2 = (paper_run["run_dir"] / "d2" / "config.yaml").read_text()
    assert re.search(r"FREEZE_AT: 2\n", d2) and re.search(r"NORM: FrozenBN\n", d2)
    assert re.search(r"BASE_LR: 0\.00025\n", d2) and re.search(r"MAX_ITER: 2\n", d2)
    assert f"WEIGHTS: {paper_run['cached']}\n" in d2  # the cached file, nothing downloaded
    # loaded once, before any step: the trunk (and all but COCO's heads) is the file's
    (state,) = paper_run["loaded"]
    assert_trunk_is_file(state, paper_run["file_state"])
    for k, v in state.items():
        if not k.startswith(COCO_HEADS):
            assert same(v, paper_run["file_state"][k]), k
    (note,) = [n for n in r["notes"] if n.startswith("initial weights")]
    assert "re-initialised" in note and all(h in note for h in COCO_HEADS)
    assert r["artifacts"]["checkpoint"] == "d2/model_final.pth"


@pytest.mark.slow
def test_lungbench_checkpoint_as_weights_path(paper_run, tiny_dataset, tmp_path, monkeypatch):
    """A run's kept model_final.pth starts another run: every tensor fits, nothing is noted."""
    assert paper_run["rc"] == 0
    pth = paper_run["run_dir"] / "d2" / "model_final.pth"
    file_state = {k: v.numpy() for k, v in
                  torch.load(pth, map_location="cpu", weights_only=False)["model"].items()}
    loaded = spy_on_loading(monkeypatch)
    cfg = compose([f"dataset_dir={tiny_dataset}", "solver=smoke", "weights=zoo",
                   f"weights.path={pth}", *SMALL, "solver.max_iter=1"])
    assert run(cfg, tmp_path / "run") == 0
    r = read_result(tmp_path / "run").data
    assert validate(r) == [] and r["status"] == "ok" and r["weights"] == str(pth)
    assert r["resumed_from_iter"] == 0  # initial weights, not a resume of the other run
    (state,) = loaded
    assert_trunk_is_file(state, file_state)
    assert set(state) == set(file_state) and all(same(state[k], file_state[k]) for k in state)
    assert not [n for n in r["notes"] if n.startswith("initial weights")]
    assert json.loads((tmp_path / "run" / "d2" / NOTES_FILE).read_text()) == []


@pytest.mark.slow
def test_imagenet_trunk_from_cache(tiny_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))
    url = to_https(compose(["dataset_dir=/x"]).backbone.imagenet_weights)
    assert cache_path(url) == cache / "detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    values = write_imagenet_pkl(cache_path(url))
    loaded = spy_on_loading(monkeypatch)
    cfg = compose([f"dataset_dir={tiny_dataset}", "solver=smoke", "weights=imagenet",
                   "weights.download=false", *SMALL, "solver.max_iter=1"])
    assert run(cfg, tmp_path / "run") == 0
    r = read_result(tmp_path / "run").data
    assert validate(r) == [] and r["status"] == "ok" and r["weights"] == "imagenet"
    (state,) = loaded
    assert_imagenet_trunk(state, values, [k for k in state if k.startswith(TRUNK)])
    fresh = [n for n in r["notes"] if n.startswith("initial weights: not in the file")]
    assert fresh and "proposal_generator" in fresh[0] and "roi_heads" in fresh[0]
    assert TRUNK not in fresh[0]


@pytest.mark.slow
def test_resumed_run_repeats_the_first_loads_notes(paper_run, tmp_path, monkeypatch):
    """A resumed process loads its own checkpoint, not the initial weights (the zoo file is
    not even in this cache), and its result still says which layers started afresh."""
    assert paper_run["rc"] == 0
    run_dir = tmp_path / "run"
    shutil.copytree(paper_run["run_dir"], run_dir)
    first = read_result(run_dir).data
    # as if the process had been killed after its last checkpoint
    (run_dir / "result.json").write_text(json.dumps(first | {"status": "failed"}))
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "empty_cache"))
    loaded = spy_on_loading(monkeypatch)
    cfg = compose([f"dataset_dir={first['config']['dataset_dir']}", "solver=paper", "weights=zoo",
                   "weights.download=false", *SMALL, "solver.max_iter=2", "keep_checkpoint=true"])
    assert run(cfg, run_dir) == 0
    r = read_result(run_dir).data
    assert r["status"] == "ok" and r["resumed_from_iter"] == 2 and loaded == []
    notes = [n for n in r["notes"] if n.startswith("initial weights")]
    assert notes == [n for n in first["notes"] if n.startswith("initial weights")] and notes


@pytest.mark.slow
def test_weights_path_alone_fine_tunes_a_zoo_file(tiny_dataset, tmp_path):
    """make train SOLVER=paper ARGS='weights.path=<zoo .pkl> ...': the default weights group is
    scratch (GroupNorm), but a BatchNorm-trained file keeps the trunk it was trained with."""
    write_zoo_pkl(tmp_path / "zoo.pkl")
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "benchmark.train", "backbone=r50_fpn", "solver=paper",
                        f"weights.path={tmp_path / 'zoo.pkl'}", "solver.max_iter=2", "solver.input_size=dataset",
                        "measure.flops=false", f"dataset_dir={tiny_dataset}", f"hydra.run.dir={run_dir}"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "ok" and res["weights"] == str(tmp_path / "zoo.pkl")
    assert res["config"]["weights"]["norm"] is None and res["config"]["weights"]["recipe"] is None
    assert res["solver"]["base_lr"] == 0.00025  # the paper's LR, not the scratch recipe's
    assert any("roi_heads.box_predictor.cls_score" in n for n in res["notes"]), res["notes"]
    d2 = (run_dir / "d2" / "config.yaml").read_text()
    assert "NORM: FrozenBN" in d2 and "FREEZE_AT: 2" in d2
