"""detectron2 training, inference and measurement for one run (everything that touches torch).

``Trainer`` is detectron2's ``DefaultTrainer`` with five changes: our data mapper (the
lung-swapping flip), a checkpointer that keeps only the last checkpoint, the run's identity in
every checkpoint, a step timer, and a progress hook that tells the run where it is (for failure
reports). Everything else
(optimizer, LR schedule, writers: metrics.json and TensorBoard events in OUTPUT_DIR,
resume) is detectron2's own.
"""

from __future__ import annotations

import contextlib
import logging
import re
import resource
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.utils import comm
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json

from benchmark.training.data import build_mapper
from contracts.fsutil import write_json

log = logging.getLogger(__name__)

_ITER_CKPT = re.compile(r"^model_\d{7}\.pth$")


class Progress:
    """Where the run is, for the ``where`` of a failure ("train iter 12", "evaluate", ...)."""

    def __init__(self) -> None:
        self.where = "setup"


class StepTimer(HookBase):
    """Seconds per training iteration (data + forward + backward + optimizer step), measured
    like detectron2's IterationTimer: registered first, so it spans every other hook's
    before_step and run_step, and stops before the other hooks' after_step."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.times: list[float] = []
        self.progress = progress
        self._t0 = 0.0
        self._cuda = False

    def before_train(self) -> None:
        # a CPU run on a GPU machine must not synchronize (and so create) a CUDA context
        self._cuda = next(self.trainer.model.parameters()).is_cuda

    def before_step(self) -> None:
        if self.progress is not None:
            self.progress.where = f"train iter {self.trainer.iter}"
        self._t0 = time.perf_counter()

    def after_step(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)


class LastCheckpointer(hooks.PeriodicCheckpointer):
    """PeriodicCheckpointer that keeps only the newest checkpoint on disk, also across
    resumed processes (fvcore's max_to_keep only knows the files its own process wrote)."""

    def after_step(self) -> None:
        # detectron2 writes checkpoints on the main process only; a rank that pruned too would
        # delete the main process's files, even one being written (fvcore's own max_to_keep
        # deletion in super() has no rank check either)
        if not comm.is_main_process():
            return
        super().after_step()
        out = Path(self.checkpointer.save_dir)
        if not self.checkpointer.has_checkpoint():
            return
        keep = Path(self.checkpointer.get_checkpoint_file()).name
        for p in out.glob("model_*.pth"):
            if _ITER_CKPT.match(p.name) and p.name != keep:
                p.unlink(missing_ok=True)


class CheckpointMismatch(RuntimeError):
    """The run folder's checkpoint was written by another run: it is never resumed."""


class RunIdentity:
    """A checkpointable that writes the run's identity hash into every checkpoint and, on
    resume, refuses a checkpoint written under another identity (another fold, seed, config
    or dataset), or one that carries none."""

    KEY = "lungbench_identity"

    def __init__(self, identity: str | None, save_dir: str) -> None:
        self.identity, self.save_dir, self.checked = identity, save_dir, False

    def state_dict(self) -> dict:
        return {"hash": self.identity}

    def load_state_dict(self, state: dict) -> None:
        theirs = (state or {}).get("hash")
        if self.identity is not None and theirs != self.identity:
            raise CheckpointMismatch(
                f"{self.save_dir}: its checkpoint was written by another run (identity {theirs}, "
                f"this run is {self.identity}: another fold, seed, config or dataset); not "
                f"resumed. Delete {self.save_dir} to train this run from the start, or use "
                "another run dir")
        self.checked = True


class Trainer(DefaultTrainer):
    """DefaultTrainer with the changes of the module doc."""

    progress: Progress | None = None  # set before construction by run_training
    identity: str | None = None       # likewise: the run's identity hash
    label: str | None = None          # likewise: the progress bar's name (None: no bar)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.run_identity = RunIdentity(self.identity, cfg.OUTPUT_DIR)
        self.checkpointer.add_checkpointable(RunIdentity.KEY, self.run_identity)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_full_test_loader(cls, cfg, dataset_name):
        """Every test image, in order, whatever the world size: detectron2's default
        InferenceSampler gives each process only its shard, and the final evaluation scores the
        whole split in one process."""
        from detectron2.data import DatasetCatalog

        dataset = DatasetCatalog.get(dataset_name)
        return build_detection_test_loader(dataset, mapper=build_mapper(cfg, is_train=False),
                                           sampler=torch.utils.data.SequentialSampler(dataset),
                                           num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # only used by eval_period > 0 (detectron2's EvalHook); the final evaluation is ours
        out = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference_periodic")
        return COCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=True,
                             output_dir=out, use_fast_impl=False)

    def build_hooks(self):
        ret = []
        for h in super().build_hooks():
            if isinstance(h, hooks.EvalHook) and self.cfg.TEST.EVAL_PERIOD <= 0:
                # v0.6's EvalHook evaluates after training whatever the period; the run's
                # own evaluation follows, so this would only do the work twice
                continue
            if isinstance(h, hooks.PeriodicCheckpointer):
                h = LastCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD, max_to_keep=1)
            if isinstance(h, hooks.PeriodicWriter):
                # detectron2 writes metrics.json every 20 iterations: a short run would have a loss
                # curve of one or two points; at least 10 points for any run of 10+ iterations
                h = hooks.PeriodicWriter(h._writers, period=writer_period(self.cfg.SOLVER.MAX_ITER))
            ret.append(h)
        self.step_timer = StepTimer(self.progress)
        extra = []
        if self.label is not None and comm.is_main_process():
            from benchmark.training.logs import progress_hook

            extra.append(progress_hook(self.label))
        return [self.step_timer] + ret + extra


def writer_period(max_iter: int) -> int:
    """Iterations between metric writes: detectron2's 20, fewer for runs under 200 iterations
    so every loss curve has at least 10 points (1 for runs under 20)."""
    return max(1, min(20, max_iter // 10))


def median_after(times: list[float], skip: int) -> tuple[float | None, int]:
    """(median, how many values it used) of ``times`` without the first ``skip`` (warm-up);
    if that leaves nothing, of all but the first; (None, 0) if empty."""
    for rest in (times[skip:], times[1:], times):
        if rest:
            return statistics.median(rest), len(rest)
    return None, 0


def run_training(d2cfg, progress: Progress, identity: str | None = None,
                 label: str | None = None) -> dict:
    """Train (resuming from OUTPUT_DIR's last checkpoint if any, and only if that checkpoint
    carries ``identity``; else from MODEL.WEIGHTS through ``benchmark.training.weights``, which refuses
    a file that is no checkpoint or does not fit the trunk). Returns the trainer's facts:
    start_iter, step times (this process), train_wall_s and when training started and finished
    (train_started_at/_finished_at, UTC ISO: when runs packed on one GPU trained at once), the
    trained model, and notes: what the initial weights did not cover (re-initialised or fresh
    layers)."""
    from benchmark.training.weights import load_initial_weights, read_notes, write_notes

    Trainer.progress, Trainer.identity, Trainer.label = progress, identity, label
    progress.where = "build model"
    trainer = Trainer(d2cfg)
    progress.where = "load checkpoint"
    resuming = trainer.checkpointer.has_checkpoint()
    if resuming:
        trainer.resume_or_load(resume=True)
        if identity is not None and not trainer.run_identity.checked:
            raise CheckpointMismatch(
                f"{d2cfg.OUTPUT_DIR}: its checkpoint carries no run identity (written by another "
                f"run, or by a lungbench older than identities); not resumed. Delete "
                f"{d2cfg.OUTPUT_DIR} to train this run from the start, or use another run dir")
        notes = read_notes(d2cfg.OUTPUT_DIR)
    else:
        # what trainer.resume_or_load does without a checkpoint (MODEL.WEIGHTS, the model's
        # tensors only, from iteration 0), and what did not fit is recorded
        report = load_initial_weights(trainer.model, d2cfg.MODEL.WEIGHTS)
        notes = report.notes() if report is not None else []
        if comm.is_main_process():
            write_notes(d2cfg.OUTPUT_DIR, notes)
    start_iter = trainer.start_iter
    if start_iter:
        log.info("resuming from the checkpoint of iteration %d", start_iter - 1)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    model = trainer.model
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return {"start_iter": start_iter, "step_times": trainer.step_timer.times,
            "train_wall_s": wall, "model": model, "notes": notes,
            "train_started_at": started.isoformat(),
            "train_finished_at": datetime.now(timezone.utc).isoformat()}


def same_size_batches(loader, batch_size: int):
    """Group the test loader's one-image lists into lists of up to ``batch_size`` images of one
    size (H, W after the test resize), so a batch adds no padding an image alone would not get."""
    buf: list = []
    for inputs in loader:
        for inp in inputs:
            if buf and (len(buf) >= batch_size or inp["image"].shape != buf[0]["image"].shape):
                yield buf
                buf = []
            buf.append(inp)
    if buf:
        yield buf


@contextlib.contextmanager
def evaluating(model) -> Iterator[None]:
    """``model`` in eval mode and without gradients inside the block; its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def forward_or_one_by_one(model, inputs: list[dict]) -> tuple[list[dict], bool]:
    """``model(inputs)``; if that runs out of GPU memory, the images again one at a time.
    Returns (outputs, whether it ran out). A single image that runs out raises.

    The retry runs after the ``except`` block, not in it: while the exception is handled its
    traceback holds the failed forward's frames, and with them every activation of the batch,
    so a retry inside the handler would start with the GPU as full as it was when it failed.
    Leaving the handler drops them; ``empty_cache`` then hands the cached blocks back."""
    try:
        return model(inputs), False
    except torch.cuda.OutOfMemoryError:
        if len(inputs) == 1:
            raise
    torch.cuda.empty_cache()
    return [model([x])[0] for x in inputs], True


def predict_split(model, d2cfg, dataset_name: str, out_json: Path, progress: Progress,
            batch_size: int = 1) -> dict:
    """Run the model on every image of ``dataset_name`` (no augmentation; ``batch_size`` images
    of one size per forward pass) and write the COCO results JSON (dataset category ids, RLE
    masks) to ``out_json`` atomically. A batch that runs out of GPU memory is run again one image
    at a time (the run finishes; ``oom_batches`` counts them). Returns {"predictions": list,
    "infer_times": seconds per image, one entry per batch (the batch's time / its images),
    "infer_batches": images in each batch, "image_ids": every image predicted, in order,
    "oom_batches": int, "eval_wall_s": float}. Also in a multi-process run this predicts the
    whole split (the caller is one process)."""
    from tqdm import tqdm

    loader = Trainer.build_full_test_loader(d2cfg, dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    to_dataset_id = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
    cuda = next(model.parameters()).is_cuda
    preds, times, sizes, image_ids = [], [], [], []
    oom_batches = 0
    t_all = time.perf_counter()
    with evaluating(model), tqdm(total=len(loader), desc="inference", unit="img", leave=False, disable=None) as bar:
        for inputs in same_size_batches(loader, batch_size):
            progress.where = f"inference image {bar.n}"
            t0 = time.perf_counter()
            # C4 heads push every image's proposals through res5 at once: a batch can need
            # more than training did, and a packed GPU may not have it
            outputs, oom = forward_or_one_by_one(model, inputs)
            oom_batches += oom
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / len(inputs))
            sizes.append(len(inputs))
            for inp, out in zip(inputs, outputs):
                image_ids.append(inp["image_id"])
                for p in instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"]):
                    p["category_id"] = to_dataset_id[p["category_id"]]
                    preds.append(p)
            bar.update(len(inputs))
    write_json(out_json, preds)
    return {"predictions": preds, "infer_times": times, "infer_batches": sizes,
            "image_ids": image_ids, "oom_batches": oom_batches, "eval_wall_s": time.perf_counter() - t_all}


def count_params_m(model) -> float:
    """Parameters in millions (all, trainable or frozen)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


class _FlatInference(torch.nn.Module):
    """GeneralizedRCNN inference on one CHW image tensor, outputs as a tuple of tensors, so
    fvcore's tracer can follow it (detectron2's own FlopCountAnalysis needs caffe2)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image):
        inst = self.model.inference([{"image": image}], do_postprocess=False)[0]
        out = [inst.pred_boxes.tensor, inst.scores, inst.pred_classes]
        if inst.has("pred_masks"):
            out.append(inst.pred_masks)
        return tuple(out)


def count_gflops(model, image_bgr) -> float:
    """GFLOPs (fvcore's count: one fused multiply-add = one flop) of one inference of
    ``model`` on ``image_bgr`` (HxWx3 uint8) at its own size, no resizing. The RoI heads'
    share depends on how many proposals/detections the model makes on that image."""
    from fvcore.nn import FlopCountAnalysis

    image = torch.as_tensor(image_bgr.transpose(2, 0, 1).copy()).to(next(model.parameters()).device)
    with evaluating(model):
        flops = FlopCountAnalysis(_FlatInference(model), (image,))
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        flops.tracer_warnings("none")
        return flops.total() / 1e9


def reset_peak_memory() -> bool:
    """Start the peak-memory counters afresh for this run (a Hydra multirun runs many runs in
    one process, whose lifetime peak would otherwise leak into later runs). Returns whether
    the RSS peak (Linux VmHWM) could be reset."""
    reset_gpu_peaks()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def gpu_peaks() -> dict | None:
    """This process's GPU memory peaks since the last reset, MiB: ``allocated`` (tensors,
    torch.cuda.max_memory_allocated, what detectron2's zoo reports) and ``reserved`` (what the
    caching allocator held, max_memory_reserved: what the GPU must have free). None where CUDA
    was never used."""
    if not torch.cuda.is_initialized():
        return None
    return {"allocated": torch.cuda.max_memory_allocated() / 2**20,
            "reserved": torch.cuda.max_memory_reserved() / 2**20}


def reset_gpu_peaks() -> None:
    """Start the GPU peaks afresh (between training and inference: each has its own)."""
    if torch.cuda.is_initialized():  # else nothing has used the GPU yet: nothing to reset
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak memory since reset_peak_memory: GPU (torch.cuda.max_memory_allocated) and the
    process's resident set (VmHWM; getrusage's lifetime peak where /proc is missing), MiB.
    DataLoader worker processes are not included."""
    # a process that never touched CUDA (a CPU run, also on a GPU machine) has no GPU peak
    gpu = (gpu_peaks() or {}).get("allocated")
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"peak_gpu_mb": gpu, "peak_rss_mb": rss}
