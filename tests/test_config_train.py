"""The run config: Hydra files -> detectron2 CfgNode (fast: nothing trains, nothing downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from detectron2 import model_zoo
from detectron2.config import get_cfg
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from benchmark.training.config import (CONF_DIR, Weights, WeightsUnavailable, build_d2_cfg, cache_path, compose,
                                       fetch_weights, resolve_weights, zoo_config_name)
from contracts.errors import ConfigError

BACKBONES = ["r50_c4", "r50_dc5", "r50_fpn", "r101_c4", "r101_dc5", "r101_fpn",
             "x101_c4", "x101_dc5", "x101_fpn"]
# what each cell must be: trunk (depth, groups, width/group, stride_in_1x1), head, zoo config
EXPECTED = {
    "r50_c4": (50, 1, 64, True, "C4", "mask_rcnn_R_50_C4_3x"),
    "r50_dc5": (50, 1, 64, True, "DC5", "mask_rcnn_R_50_DC5_3x"),
    "r50_fpn": (50, 1, 64, True, "FPN", "mask_rcnn_R_50_FPN_3x"),
    "r101_c4": (101, 1, 64, True, "C4", "mask_rcnn_R_101_C4_3x"),
    "r101_dc5": (101, 1, 64, True, "DC5", "mask_rcnn_R_101_DC5_3x"),
    "r101_fpn": (101, 1, 64, True, "FPN", "mask_rcnn_R_101_FPN_3x"),
    "x101_c4": (101, 32, 8, False, "C4", "mask_rcnn_R_101_C4_3x"),
    "x101_dc5": (101, 32, 8, False, "DC5", "mask_rcnn_R_101_DC5_3x"),
    "x101_fpn": (101, 32, 8, False, "FPN", "mask_rcnn_X_101_32x8d_FPN_3x"),
}
X101_STD = [57.375, 57.120, 58.395]


def d2cfg(*overrides: str, image_hw=(64, 64)):
    cfg = compose(["dataset_dir=/nonexistent", *overrides])
    return build_d2_cfg(cfg, train_name="tr", test_name="te", output_dir="/tmp/x", image_hw=image_hw)


def zoo(name: str):
    z = get_cfg()
    z.merge_from_file(model_zoo.get_config_file(f"COCO-InstanceSegmentation/{name}.yaml"))
    return z


def test_exactly_nine_backbone_files():
    assert sorted(p.stem for p in (CONF_DIR / "backbone").glob("*.yaml")) == sorted(BACKBONES)


@pytest.mark.parametrize("bb", BACKBONES)
def test_backbone_yields_intended_detectron2_config(bb):
    depth, groups, width, s1x1, head, base = EXPECTED[bb]
    cfg = compose(["dataset_dir=/x", f"backbone={bb}"])
    assert zoo_config_name(cfg) == f"COCO-InstanceSegmentation/{base}.yaml"
    assert cfg.backbone.name == f"{bb.split('_')[0].upper()}-{head}"
    assert cfg.backbone.in_zoo == (bb not in ("x101_c4", "x101_dc5"))
    d = d2cfg(f"backbone={bb}")
    r = d.MODEL.RESNETS
    assert (r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.STRIDE_IN_1X1) == (depth, groups, width, s1x1)
    assert d.MODEL.PIXEL_STD == (X101_STD if groups == 32 else [1.0, 1.0, 1.0])
    assert d.MODEL.ROI_HEADS.NUM_CLASSES == 3 and d.MODEL.MASK_ON
    if head == "FPN":
        assert d.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
        assert d.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    elif head == "C4":
        assert d.MODEL.ROI_HEADS.NAME == "Res5ROIHeads" and d.MODEL.RESNETS.RES5_DILATION == 1
    else:  # DC5: dilated res5, standard heads on res5
        assert d.MODEL.RESNETS.RES5_DILATION == 2 and d.MODEL.ROI_HEADS.IN_FEATURES == ["res5"]


@pytest.mark.parametrize("bb", [b for b in BACKBONES if b not in ("x101_c4", "x101_dc5")])
def test_in_zoo_files_describe_the_zoo_config_truly(bb):
    """The trunk fields of an in-zoo file equal what detectron2's config says (no silent change)."""
    cfg = compose(["dataset_dir=/x", f"backbone={bb}"])
    z = zoo(Path(zoo_config_name(cfg)).stem)
    r = cfg.backbone.resnets
    assert (z.MODEL.RESNETS.DEPTH, z.MODEL.RESNETS.NUM_GROUPS, z.MODEL.RESNETS.WIDTH_PER_GROUP,
            z.MODEL.RESNETS.STRIDE_IN_1X1) == (r.depth, r.num_groups, r.width_per_group, r.stride_in_1x1)
    assert list(z.MODEL.PIXEL_STD) == pytest.approx(list(cfg.backbone.pixel_std))
    assert z.MODEL.WEIGHTS == cfg.backbone.imagenet_weights  # the zoo configs name their ImageNet trunk


def test_x101_c4_dc5_match_detectron2s_x101_fpn_trunk():
    x = zoo("mask_rcnn_X_101_32x8d_FPN_3x")
    for bb in ("x101_c4", "x101_dc5"):
        d = d2cfg(f"backbone={bb}")
        for key in ("DEPTH", "NUM_GROUPS", "WIDTH_PER_GROUP", "STRIDE_IN_1X1"):
            assert d.MODEL.RESNETS[key] == x.MODEL.RESNETS[key], (bb, key)
        assert list(d.MODEL.PIXEL_STD) == list(x.MODEL.PIXEL_STD)
        assert d.MODEL.PIXEL_MEAN == x.MODEL.PIXEL_MEAN


def test_typos_are_rejected():
    with pytest.raises(ConfigError, match="Non-existent key: MODEL.RESNETS.DEPHT"):
        d2cfg("d2_opts=[MODEL.RESNETS.DEPHT,50]")
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)):
        compose(["dataset_dir=/x", "solver.max_iterr=3"])
    with pytest.raises(ConfigCompositionException):
        compose(["dataset_dir=/x", "backbone=r50_fnp"])
    with pytest.raises(ConfigError, match="flip"):
        d2cfg("input.flip=horizontal")


def test_d2_opts_apply_last():
    d = d2cfg("d2_opts=[MODEL.RPN.NMS_THRESH,0.6,SOLVER.MAX_ITER,7]")
    assert d.MODEL.RPN.NMS_THRESH == 0.6 and d.SOLVER.MAX_ITER == 7


def test_scratch_switches_to_gn_and_unfreezes():
    d = d2cfg("weights=scratch")
    assert d.MODEL.RESNETS.NORM == "GN" and d.MODEL.BACKBONE.FREEZE_AT == 0
    assert d.MODEL.WEIGHTS == ""
    for w in ("zoo", "imagenet"):
        d = d2cfg(f"weights={w}")
        assert d.MODEL.RESNETS.NORM == "FrozenBN" and d.MODEL.BACKBONE.FREEZE_AT == 2


def test_ct_correct_defaults():
    d = d2cfg()
    assert d.INPUT.RANDOM_FLIP == "none" and d.LUNGBENCH.FLIP == "none"
    assert d.INPUT.MASK_FORMAT == "bitmask"
    assert d.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False
    assert compose(["dataset_dir=/x"]).weights.source == "scratch"  # no download by default


def test_solver_presets(monkeypatch):
    # num_workers: auto, one run: the machine's cores less one for the main process, between 1 and 4
    for cores, workers in ((16, 4), (4, 3), (3, 2), (2, 1), (1, 1)):  # 15 -> 4; 3; 2; 1; 0 -> 1
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert d2cfg("solver=paper").DATALOADER.NUM_WORKERS == workers, cores
    monkeypatch.undo()
    p = d2cfg("solver=paper", "weights=zoo")  # the paper's protocol
    assert (p.SOLVER.IMS_PER_BATCH, p.SOLVER.BASE_LR, p.SOLVER.MAX_ITER) == (2, 0.00025, 5000)
    assert p.SOLVER.WARMUP_ITERS == 1000 and not p.SOLVER.CLIP_GRADIENTS.ENABLED
    # from scratch, every solver takes the scratch recipe (conf/weights/scratch.yaml)
    r = d2cfg("solver=paper", "weights=scratch")
    assert (r.SOLVER.BASE_LR, r.SOLVER.WARMUP_ITERS, r.SOLVER.MAX_ITER) == (0.005, 50, 5000)
    assert r.SOLVER.CLIP_GRADIENTS.ENABLED and r.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "norm"
    assert r.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 5.0
    assert d2cfg("solver=smoke").SOLVER.WARMUP_ITERS == 5  # a quarter of its 20 iterations
    assert not p.SOLVER.AMP.ENABLED and not p.CUDNN_BENCHMARK  # amp auto on the CPU: off; cudnn off
    assert p.INPUT.MIN_SIZE_TEST == 800 and p.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512
    s = d2cfg("solver=smoke", image_hw=(64, 64))
    assert s.SOLVER.MAX_ITER <= 20 and s.DATALOADER.NUM_WORKERS in (0, 1)
    assert s.INPUT.MIN_SIZE_TRAIN == (64,) and s.INPUT.MIN_SIZE_TEST == 64
    assert s.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE <= 32 and s.MODEL.RPN.POST_NMS_TOPK_TRAIN <= 100


def test_lr_schedules():
    assert d2cfg("solver=paper").SOLVER.STEPS == ()  # constant after warm-up, as the paper ran
    s = d2cfg("solver=paper", "solver.lr_schedule=scaled")  # 3x: 210k, 250k of 270k
    assert s.SOLVER.STEPS == (round(210000 / 270000 * 5000), round(250000 / 270000 * 5000))
    s = d2cfg("solver=paper", "solver.lr_schedule=scaled", "schedule=1x")  # 60k, 80k of 90k
    assert s.SOLVER.STEPS == (3333, 4444)
    with pytest.raises(ConfigError, match="lr_schedule"):
        d2cfg("solver.lr_schedule=cosine")


def test_schedule_must_exist_in_zoo():
    with pytest.raises(ConfigError, match="R101-FPN has no 1x"):
        d2cfg("backbone=r101_fpn", "schedule=1x")
    assert d2cfg("backbone=r50_fpn", "schedule=1x").SOLVER.STEPS == ()


def test_options_map_to_detectron2():
    d = d2cfg("seed=7", "score_thresh=0.3", "eval_period=5")
    assert d.SEED == 7 and d.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3 and d.TEST.EVAL_PERIOD == 5


def test_zoo_weights_url_and_x101_fallback():
    w = resolve_weights(compose(["dataset_dir=/x", "weights=zoo", "backbone=r50_fpn"]))
    assert w.kind == "zoo" and w.url == (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
        "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl")
    w = resolve_weights(compose(["dataset_dir=/x", "weights=zoo", "backbone=x101_c4"]))
    assert w.kind == "imagenet" and w.url.endswith("FAIR/X-101-32x8d.pkl") and "not in" in w.note
    with pytest.raises(ConfigError, match="not in detectron2's model zoo"):
        resolve_weights(compose(["dataset_dir=/x", "weights=zoo", "weights.fallback=error",
                                 "backbone=x101_dc5"]))
    w = resolve_weights(compose(["dataset_dir=/x", "weights=imagenet", "backbone=r101_c4"]))
    assert w.url.endswith("MSRA/R-101.pkl")


def test_missing_weights_offline_name_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    w = resolve_weights(compose(["dataset_dir=/x", "weights=zoo"]))
    with pytest.raises(WeightsUnavailable) as e:
        fetch_weights(w, download=False)
    msg = str(e.value)
    assert w.url in msg and str(tmp_path / "cache") in msg
    # placing the file where the message says makes it found, without any download
    target = cache_path(w.url)
    assert str(target) in msg
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert fetch_weights(w, download=False) == str(target)
    with pytest.raises(WeightsUnavailable, match="no such file"):
        fetch_weights(Weights(kind="/nope.pth", path="/nope.pth"))


def test_missing_weights_fail_the_run_before_training(tiny_dataset, tmp_path, monkeypatch):
    from contracts.result import read_result, validate
    from benchmark.training.run import run

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    cfg = compose([f"dataset_dir={tiny_dataset}", "weights=zoo", "weights.download=false"])
    assert run(cfg, tmp_path / "run") == 1
    r = read_result(tmp_path / "run").data
    assert validate(r) == []
    assert r["status"] == "failed" and r["error"]["type"] == "WeightsUnavailable"
    assert r["error"]["where"] == "check weights" and "dl.fbaipublicfiles.com" in r["error"]["message"]
    assert not list((tmp_path / "run").rglob("*.pth"))  # nothing was built or trained
    assert r["dataset"]["n_train_images"] > 0 and r["weights"] == "zoo"


def test_bad_dataset_dir_is_a_failed_result(tmp_path):
    from contracts.result import read_result
    from benchmark.training.run import run

    assert run(compose([f"dataset_dir={tmp_path / 'nope'}"]), tmp_path / "run") == 1
    r = read_result(tmp_path / "run").data
    assert r["error"]["type"] == "DatasetError" and "no such folder" in r["error"]["message"]
    assert r["error"]["where"] == "check dataset"


def test_amp_on_cpu_is_refused(tiny_dataset, tmp_path):
    from contracts.result import read_result
    from benchmark.training.run import run

    # device=cpu: the same refusal on a machine with a GPU as on one without
    assert run(compose([f"dataset_dir={tiny_dataset}", "amp=true", "device=cpu"]), tmp_path / "r") == 1
    assert "amp=true needs CUDA" in read_result(tmp_path / "r").data["error"]["message"]
