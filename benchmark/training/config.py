"""The run config: composed from conf/ (``compose``), as a run records it (``run_config``),
turned into a detectron2 CfgNode, and which weights a run starts from.

The model is always detectron2's own model-zoo config for the backbone cell (``zoo_config`` +
``_<schedule>.yaml``), changed by a short list of deltas that go through
``CfgNode.merge_from_list``, so a misspelt key fails instead of being ignored. ``build_d2_cfg``
is pure (no files read except the packed zoo config, nothing downloaded); ``fetch_weights``
is the one step that may touch the network, and runs before training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from benchmark.training.hydra_env import FORK, concurrent_runs, joblib_launcher
from contracts.catalog import CLASS_NAMES
from contracts.errors import ConfigError
from contracts.fsutil import sanitize

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


class WeightsUnavailable(RuntimeError):
    """Initial weights cannot be obtained (offline, or a missing local file)."""


class WeightsMismatch(WeightsUnavailable):
    """The initial weights file is no checkpoint, or its trunk does not fit the backbone
    (``benchmark.training.weights``)."""


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# seconds a download may wait on the network for one step (connect, one read): a network that
# drops packets fails the run instead of hanging it
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Weights:
    """Where a run's initial weights come from.

    kind: what result.json records: "zoo" | "imagenet" | "scratch" | the local path.
    url: the https URL to fetch (zoo/imagenet), else None. path: a local file, else None.
    note: why the choice differs from the one asked for (zoo fallback), else None.
    """

    kind: str
    url: str | None = None
    path: str | None = None
    note: str | None = None


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run config from conf/train.yaml + Hydra overrides, outside a Hydra app (tests,
    perf, notebooks). Unknown keys and bad choices raise, as on the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def resolved_config(cfg: DictConfig) -> dict:
    """The run's full config as plain data, dataset_dir made absolute (what result.json keeps)."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    c["dataset_dir"] = str(Path(c["dataset_dir"]).expanduser().resolve())
    return sanitize(c)


def run_config(cfg: DictConfig) -> dict:
    """The config a run records (resolved_config), after the adjustments a run makes to
    ``cfg`` in place: solver.num_workers=auto sized to the concurrent runs; 0 under the joblib
    launcher where fork is missing (macOS, Windows: hydra#964). The sweep's plan calls it too."""
    if joblib_launcher() and not FORK and cfg.solver.num_workers:
        OmegaConf.update(cfg, "solver.num_workers", 0)
    _norm_from_file(cfg)
    if cfg.solver.num_workers == "auto":
        OmegaConf.update(cfg, "solver.num_workers", auto_workers(os.cpu_count() or 1, concurrent_runs()))
    return resolved_config(cfg)


def _norm_from_file(cfg: DictConfig) -> None:
    """weights.path with a trainable-norm weights group (the default, scratch): a file trained
    with BatchNorm (a zoo or ImageNet file, a fine-tune of one) keeps the trunk it was trained
    with (frozen BN, the zoo config's FREEZE_AT, the solver's LR), not the random-init recipe."""
    w = cfg.weights
    if not w.get("path") or w.get("norm") in (None, "FrozenBN", "BN", "SyncBN"):
        return
    from benchmark.training.weights import trained_with_bn

    if trained_with_bn(Path(str(w.path)).expanduser()):
        for key in ("norm", "freeze_at", "recipe"):
            if key in w:
                OmegaConf.update(cfg, f"weights.{key}", None)


def zoo_config_name(cfg: DictConfig) -> str:
    """detectron2 model-zoo config of the cell, e.g. COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml."""
    bb, schedule = cfg.backbone, cfg.schedule.name
    if schedule not in bb.schedules:
        raise ConfigError(f"{bb.name} has no {schedule} config in detectron2's model zoo "
                          f"(it has {', '.join(bb.schedules)}): use schedule={bb.schedules[-1]}")
    return f"{bb.zoo_config}_{schedule}.yaml"


def to_https(url: str) -> str:
    """detectron2://X -> https://dl.fbaipublicfiles.com/detectron2/X (other URLs unchanged)."""
    if url.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_URL + url[len(DETECTRON2_PREFIX):]
    return url


def cache_path(url: str) -> Path:
    """Where iopath (detectron2's downloader) caches ``url``: HTTPURLHandler's
    <cache>/<url path dirname>/<file name>, the cache being $FVCORE_CACHE, else ~/.torch/iopath_cache."""
    rel = urlparse(to_https(url)).path.lstrip("/")
    cache = Path(os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache")))
    return cache / os.path.dirname(rel) / rel.split("/")[-1]


def resolve_weights(cfg: DictConfig) -> Weights:
    """Which weights this run starts from (no I/O). Raises ConfigError for impossible choices."""
    w, bb = cfg.weights, cfg.backbone
    if w.get("path"):
        return Weights(kind=str(w.path), path=str(w.path))
    if w.source == "scratch":
        return Weights(kind="scratch")
    if w.source == "imagenet":
        return Weights(kind="imagenet", url=to_https(bb.imagenet_weights))
    if w.source == "zoo":
        if bb.in_zoo:
            from detectron2 import model_zoo

            return Weights(kind="zoo", url=model_zoo.get_checkpoint_url(zoo_config_name(cfg)))
        why = f"{bb.name} is not in detectron2's model zoo: no COCO checkpoint exists"
        if w.fallback == "imagenet":
            return Weights(kind="imagenet", url=to_https(bb.imagenet_weights),
                           note=f"{why}; started from the ImageNet trunk (weights.fallback=imagenet)")
        raise ConfigError(f"{why}. Use weights=imagenet, weights=scratch or weights.path=FILE")
    raise ConfigError(f"weights.source={w.source!r}: expected zoo, imagenet or scratch")


def fetch_weights(weights: Weights, download: bool = True) -> str:
    """A local file holding ``weights`` ("" for scratch). Downloads into iopath's cache unless
    ``download`` is false. Raises WeightsUnavailable naming the URL and the cache file to place
    it at, so an offline user can fetch it elsewhere and copy it there."""
    if weights.path is not None:
        p = Path(weights.path).expanduser()
        if not p.is_file():
            raise WeightsUnavailable(f"weights.path: no such file: {p}")
        return str(p.resolve())
    if weights.url is None:
        return ""
    target = cache_path(weights.url)
    if target.is_file():
        return str(target)
    hint = (f"download {weights.url} and place it at {target} (iopath cache: $FVCORE_CACHE, "
            f"default ~/.torch/iopath_cache), or pass weights.path=FILE")
    if not download:
        raise WeightsUnavailable(f"{weights.kind} weights are not in the cache and "
                                 f"weights.download=false: {hint}")
    import socket

    from detectron2.utils.file_io import PathManager

    # iopath's urlretrieve has no timeout of its own: it waits on the process default
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S if old_timeout is None else old_timeout)
    try:
        return PathManager.get_local_path(weights.url)
    except Exception as e:  # noqa: BLE001 - any network/IO error means the same to the user
        raise WeightsUnavailable(f"cannot download {weights.kind} weights ({type(e).__name__}: "
                                 f"{e}); offline? {hint}") from e
    finally:
        socket.setdefaulttimeout(old_timeout)


def resolve_device(device: str) -> str:
    """auto -> cuda if available else cpu; cuda without CUDA is an error, and so is auto where
    nvidia-smi sees a GPU that torch cannot use (benchmark.cudacheck: a CPU run there would be
    an accident; device=cpu asks for one)."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        from benchmark.cudacheck import CudaUnusable, check

        try:
            check()
        except CudaUnusable as e:
            raise ConfigError(f"device=auto: {e}") from None
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device: use device=auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r}: expected auto, cpu or cuda")
    return device


def amp_choice(cfg: DictConfig):
    """``amp`` as the run asks for it: the top-level ``amp`` unless it is ``auto``, then the
    solver's own ``amp`` where it has one (solver=paper: false, the paper trained in fp32, as
    the zoo configs do), else ``auto`` (on with CUDA)."""
    if cfg.amp != "auto":
        return cfg.amp
    own = cfg.solver.get("amp")
    return "auto" if own is None else own


def resolve_switch(name: str, value: Any, device: str) -> bool:
    """An on/off option that may be ``auto`` (on with CUDA): ``amp``, ``cudnn_benchmark``.
    amp=true without CUDA is an error (detectron2's AMPTrainer needs it)."""
    if value == "auto":
        return device == "cuda"
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected auto, true or false")
    if name == "amp" and value and device != "cuda":
        raise ConfigError("amp=true needs CUDA (detectron2's AMPTrainer); use amp=false on CPU")
    return value


def resolve_infer_batch(value: Any, device: str) -> int:
    """Images per forward pass in the final inference: ``auto`` = 8 with CUDA (a GPU is idle at
    one 800-px slice), 1 on the CPU (no gain there, perf/RESULTS.md ``infer_batch_speedup_cpu``)."""
    if value == "auto":
        return 8 if device == "cuda" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"infer_batch_size={value!r}: expected auto or an integer >= 1")
    return value


def auto_workers(cores: int, concurrent_runs: int) -> int:
    """DataLoader workers for ``solver.num_workers=auto``: the cores each concurrent run gets,
    less one for its main process, between 1 and 4 (the paper mapper maps ~33 slices/s per
    core, measured on a CPU; a GPU run of a few iterations per second needs only a few)."""
    return max(1, min(4, cores // max(1, concurrent_runs) - 1))


def _input_sizes(input_size: Any, image_hw: Sequence[int] | None) -> list[tuple[str, Any]]:
    if input_size == "zoo":
        return []
    if input_size == "dataset":
        if image_hw is None:
            raise ConfigError("solver.input_size=dataset needs the dataset's image size")
        short, long = min(image_hw), max(image_hw)
        # short side = the images' own, long-side cap = their long side: ResizeShortestEdge is a no-op
        return [("INPUT.MIN_SIZE_TRAIN", (short,)), ("INPUT.MAX_SIZE_TRAIN", long),
                ("INPUT.MIN_SIZE_TEST", short), ("INPUT.MAX_SIZE_TEST", long)]
    if isinstance(input_size, int) and input_size > 0:
        return [("INPUT.MIN_SIZE_TRAIN", (input_size,)), ("INPUT.MIN_SIZE_TEST", input_size)]
    raise ConfigError(f"solver.input_size={input_size!r}: expected zoo, dataset or a positive int")


def effective_lr(cfg: DictConfig) -> float:
    """SOLVER.BASE_LR of the run: the weights' recipe's (scratch) where it sets one, else the solver's."""
    r = cfg.weights.get("recipe")
    return float(r.base_lr) if r and r.get("base_lr") is not None else float(cfg.solver.base_lr)


def _recipe(r, max_iter: int) -> list[tuple[str, Any]]:
    """The weights' training recipe (conf/weights/scratch.yaml): LR, warm-up, gradient clipping."""
    if not r:
        return []
    ops: list[tuple[str, Any]] = []
    if r.get("base_lr") is not None:
        ops.append(("SOLVER.BASE_LR", float(r.base_lr)))
    if r.get("warmup_iters") is not None:
        ops.append(("SOLVER.WARMUP_ITERS", min(int(r.warmup_iters), max(1, max_iter // 4))))
    if r.get("clip_gradients"):
        ops += [("SOLVER.CLIP_GRADIENTS.ENABLED", True), ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"),
                ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", float(r.clip_gradients))]
    return ops


def lr_steps(schedule: str, max_iter: int, zoo_steps: Sequence[int], zoo_max_iter: int) -> tuple:
    """SOLVER.STEPS for lr_schedule ``paper`` (none: constant LR after warm-up, as the paper's
    5000-iteration run on the zoo config had, its steps at 210k/250k never being reached) or
    ``scaled`` (the zoo schedule's decay points at the same fractions of max_iter)."""
    if schedule == "paper":
        return ()
    if schedule == "scaled":
        return tuple(max(1, round(s * max_iter / zoo_max_iter)) for s in zoo_steps)
    raise ConfigError(f"solver.lr_schedule={schedule!r}: expected paper or scaled")


def d2_deltas(cfg: DictConfig, *, base, train_name: str, test_name: str, output_dir: str,
              weights_file: str, device: str, image_hw: Sequence[int] | None) -> list[tuple[str, Any]]:
    """The (KEY, value) changes applied to the zoo config, in order."""
    bb, s, w = cfg.backbone, cfg.solver, cfg.weights
    ops: list[tuple[str, Any]] = [
        # trunk (equal to the zoo config's own values for in-zoo cells; X101-C4/DC5 get ResNeXt)
        ("MODEL.RESNETS.DEPTH", int(bb.resnets.depth)),
        ("MODEL.RESNETS.NUM_GROUPS", int(bb.resnets.num_groups)),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", int(bb.resnets.width_per_group)),
        ("MODEL.RESNETS.STRIDE_IN_1X1", bool(bb.resnets.stride_in_1x1)),
        ("MODEL.PIXEL_STD", [float(x) for x in bb.pixel_std]),
        ("MODEL.WEIGHTS", weights_file),
        ("MODEL.DEVICE", device),
        ("MODEL.ROI_HEADS.NUM_CLASSES", len(CLASS_NAMES)),
        ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", float(cfg.score_thresh)),
        # RLE masks from the converter; never a label-keeping flip (our mapper does the swap flip)
        ("INPUT.MASK_FORMAT", "bitmask"),
        ("INPUT.RANDOM_FLIP", "none"),
        ("DATASETS.TRAIN", (train_name,)),
        ("DATASETS.TEST", (test_name,)),
        # auto: run() sizes it to the concurrent runs first; here (perf, notebooks) one run
        ("DATALOADER.NUM_WORKERS", auto_workers(os.cpu_count() or 1, 1)
         if s.num_workers == "auto" else int(s.num_workers)),
        ("DATALOADER.FILTER_EMPTY_ANNOTATIONS", bool(cfg.input.filter_empty)),
        ("SOLVER.IMS_PER_BATCH", int(s.ims_per_batch)),
        ("SOLVER.BASE_LR", float(s.base_lr)),
        ("SOLVER.MAX_ITER", int(s.max_iter)),
        ("SOLVER.STEPS", lr_steps(s.lr_schedule, int(s.max_iter), base.SOLVER.STEPS, base.SOLVER.MAX_ITER)),
        ("SOLVER.CHECKPOINT_PERIOD", int(s.checkpoint_period)),
        ("SOLVER.AMP.ENABLED", resolve_switch("amp", amp_choice(cfg), device)),
        ("CUDNN_BENCHMARK", resolve_switch("cudnn_benchmark", cfg.cudnn_benchmark, device)),
        ("TEST.EVAL_PERIOD", int(cfg.eval_period)),
        ("SEED", int(cfg.seed)),
        ("OUTPUT_DIR", str(output_dir)),
    ]
    optional = [("MODEL.RESNETS.NORM", w.norm, str), ("MODEL.BACKBONE.FREEZE_AT", w.freeze_at, int),
                ("SOLVER.WARMUP_ITERS", s.warmup_iters, int),
                ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", s.roi_batch_size_per_image, int),
                ("TEST.DETECTIONS_PER_IMAGE", s.detections_per_image, int)]
    ops += [(key, cast(v)) for key, v, cast in optional if v is not None]
    ops += _recipe(w.get("recipe"), int(s.max_iter))  # after the solver's: the weights' recipe wins
    if s.rpn_topk is not None:
        k = s.rpn_topk
        ops += [("MODEL.RPN.PRE_NMS_TOPK_TRAIN", int(k.pre_train)),
                ("MODEL.RPN.POST_NMS_TOPK_TRAIN", int(k.post_train)),
                ("MODEL.RPN.PRE_NMS_TOPK_TEST", int(k.pre_test)),
                ("MODEL.RPN.POST_NMS_TOPK_TEST", int(k.post_test))]
    ops += _input_sizes(s.input_size, image_hw)
    return ops


def build_d2_cfg(cfg: DictConfig, *, train_name: str, test_name: str, output_dir: str,
                 weights_file: str = "", device: str = "cpu",
                 image_hw: Sequence[int] | None = None):
    """detectron2 CfgNode of the run: the cell's zoo config + ``d2_deltas`` + ``cfg.d2_opts``.

    ``image_hw``: the dataset's (height, width) in pixels (needed by input_size=dataset).
    Also adds a LUNGBENCH node (FLIP, FLIP_PROB) that our train loader reads; plain
    detectron2 ignores it. Raises ConfigError for a bad option or an unknown detectron2 key
    in ``d2_opts``."""
    from detectron2 import model_zoo
    from detectron2.config import CfgNode, get_cfg

    if cfg.input.flip not in ("none", "swap"):
        raise ConfigError(f"input.flip={cfg.input.flip!r}: expected none or swap (a flip that "
                          "keeps the lung labels mirrors anatomy and is not offered)")
    d2 = get_cfg()
    d2.merge_from_file(model_zoo.get_config_file(zoo_config_name(cfg)))
    base = d2.clone()
    flat: list[Any] = []
    for key, value in d2_deltas(cfg, base=base, train_name=train_name, test_name=test_name,
                                output_dir=output_dir, weights_file=weights_file, device=device,
                                image_hw=image_hw):
        flat += [key, value]
    d2.merge_from_list(flat)
    opts = OmegaConf.to_container(cfg.d2_opts) if cfg.d2_opts else []
    if len(opts) % 2:
        raise ConfigError(f"d2_opts needs KEY VALUE pairs, got an odd list: {opts}")
    try:
        d2.merge_from_list([str(o) if i % 2 == 0 else o for i, o in enumerate(opts)])
    except (AssertionError, KeyError, ValueError) as e:  # yacs asserts on unknown keys
        raise ConfigError(f"d2_opts: {e}") from e
    needs = compiled_ops_needed(d2)
    if needs and not has_compiled_ops():
        raise ConfigError(
            f"d2_opts: {'; '.join(needs)}: needs detectron2's compiled C++/CUDA ops, which this "
            "detectron2 (the pure-Python build, benchmark/build_detectron2.py) does not have. "
            "Leave the option out, or install a detectron2 built with its extension")
    d2.LUNGBENCH = CfgNode({"FLIP": str(cfg.input.flip), "FLIP_PROB": float(cfg.input.flip_prob)})
    d2.freeze()
    return d2


# detectron2 options whose layers exist only in its C++/CUDA extension (detectron2._C):
# deformable convolution and the rotated-box family (RRPN, rotated RoIAlign)
_ROTATED = {"MODEL.PROPOSAL_GENERATOR.NAME": ("RRPN",),
            "MODEL.ANCHOR_GENERATOR.NAME": ("RotatedAnchorGenerator",),
            "MODEL.ROI_HEADS.NAME": ("RROIHeads",),
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE": ("ROIAlignRotated",),
            "MODEL.ROI_MASK_HEAD.POOLER_TYPE": ("ROIAlignRotated",),
            "MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE": ("ROIAlignRotated",)}


def compiled_ops_needed(d2) -> list[str]:
    """The settings of detectron2 CfgNode ``d2`` that need detectron2's compiled ops, as
    "KEY=value" strings (empty: the model runs on torch/torchvision ops alone)."""
    def get(key: str):
        node = d2
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        return node

    found = []
    deform = get("MODEL.RESNETS.DEFORM_ON_PER_STAGE")
    if deform and any(deform):
        found.append(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(deform)} (deformable convolution)")
    for key, values in _ROTATED.items():
        if get(key) in values:
            found.append(f"{key}={get(key)} (rotated boxes)")
    return found


def has_compiled_ops() -> bool:
    """Whether the installed detectron2 has its C++/CUDA extension (``detectron2._C``)."""
    import importlib.util

    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def check_num_gpus(num_gpus: Any, ims_per_batch: Any) -> None:
    """Raise ConfigError unless ``num_gpus`` >= 1 divides ``solver.ims_per_batch``: every
    process loads ims_per_batch / num_gpus images per iteration (detectron2 asserts this
    deep inside its train loader otherwise)."""
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ConfigError(f"num_gpus={num_gpus!r}: expected an integer >= 1")
    ims = int(ims_per_batch)
    if ims % num_gpus:
        fits = [n for n in range(1, ims + 1) if ims % n == 0]
        raise ConfigError(
            f"num_gpus={num_gpus} does not divide solver.ims_per_batch={ims}: each GPU process "
            f"takes ims_per_batch / num_gpus images per iteration. Use num_gpus="
            f"{'|'.join(map(str, fits))}, or solver.ims_per_batch={-(-ims // num_gpus) * num_gpus} "
            f"(a multiple of {num_gpus}: a larger batch, so another run than the paper's)")
