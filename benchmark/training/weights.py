"""Loading a run's initial weights, and saying what did not fit.

detectron2 loads whatever matches the model by name and shape and only logs the rest: a file
for another backbone, or one that is no checkpoint at all, would start a run from nearly
random weights without a word in result.json. ``load_initial_weights`` loads exactly as
detectron2's trainer does (``DetectionCheckpointer``: model-zoo ``.pkl``, Caffe2 ``.pkl`` with
detectron2's name conversion, ``.pth``) and in addition

- refuses a file that is not a checkpoint (``WeightsMismatch``, naming the file);
- refuses a file whose trunk does not fit the model (``WeightsMismatch``, naming the file and
  the first tensor): the trunk is the ResNet (stem, res2-res5; with C4 the res5 stage in the
  RoI heads), and it fits when every trunk tensor of the model is in the file with the same
  shape and the file holds no trunk tensor the model lacks (another depth or width). The
  heads (FPN, RPN, box and mask heads) may differ freely: COCO's 80-class predictors, or an
  ImageNet file without any heads, are expected;
- returns a ``LoadReport``: the tensors that start from their initialisation instead (shape
  differs, or not in the file) and the file's tensors the model has no place for, as notes
  for result.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from benchmark.training.config import WeightsMismatch

NOTES_FILE = "initial_weights.json"  # in OUTPUT_DIR: the notes of the first load, for a resume
_MAX_LISTED = 30
# a Caffe2 trunk name after detectron2's conversion (convert_basic_c2_names)
_C2_TRUNK = re.compile(r"^(stem|res[2-5])\.")


def _shape(t) -> tuple[int, ...]:
    return tuple(int(x) for x in t.shape)


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def trunk_prefixes(model: torch.nn.Module) -> list[str]:
    """State-dict prefixes of the model's ResNet trunk: ``backbone.bottom_up.`` (FPN) or
    ``backbone.`` (C4, DC5), plus ``roi_heads.res5.`` where the RoI heads hold res5 (C4)."""
    from detectron2.modeling.backbone.resnet import ResNet

    prefixes = [f"{name}." for name, m in model.named_modules() if isinstance(m, ResNet) and name]
    if not prefixes:  # not a ResNet: the whole backbone is the trunk
        prefixes = ["backbone."]
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and isinstance(getattr(roi_heads, "res5", None), torch.nn.Module):
        prefixes.append("roi_heads.res5.")
    return prefixes


def trunk_keys(model: torch.nn.Module) -> list[str]:
    """The trunk's state-dict keys in model order (BatchNorm's step counters left out)."""
    prefixes = tuple(trunk_prefixes(model))
    return [k for k in model.state_dict() if k.startswith(prefixes)
            and not k.endswith("num_batches_tracked")]


def _collapse(keys: list[str], universe: list[str]) -> list[str]:
    """``keys`` as the fewest module names: a module all of whose tensors (in ``universe``)
    are in ``keys`` is named instead of its tensors. Order of first appearance."""
    chosen = set(keys)
    out: list[str] = []
    for k in keys:
        parts = k.split(".")
        name = k
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            members = [u for u in universe if u.startswith(prefix + ".")]
            if members and all(u in chosen for u in members):
                name = prefix
                break
        if name not in out:
            out.append(name)
    return out


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


@dataclass
class LoadReport:
    """What loading ``file`` left as it was. ``reinitialised``: (key, shape in the file, shape
    in the model) for tensors whose shape differs (the model keeps its initialisation);
    ``missing``: model keys the file does not have; ``unexpected``: file keys the model has no
    place for (ignored); ``model_keys``: every key of the model's state dict."""

    file: str
    reinitialised: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    model_keys: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line each for result.json's notes (none when the file fitted the whole model)."""
        notes = []
        if self.reinitialised:
            mods: dict[str, tuple] = {}
            for key, theirs, ours in self.reinitialised:
                mod, _, leaf = key.rpartition(".")
                if mod not in mods or leaf == "weight":
                    mods[mod] = (theirs, ours)
            notes.append("initial weights: re-initialised, their shape differs from the file's: "
                         + _listing([f"{m} ({_fmt(t)} in the file, {_fmt(o)} in the model)"
                                     for m, (t, o) in mods.items()]))
        if self.missing:
            notes.append("initial weights: not in the file, initialised afresh: "
                         + _listing(_collapse(self.missing, self.model_keys)))
        if self.unexpected:
            groups = list(dict.fromkeys(k.rpartition(".")[0] or k for k in self.unexpected))
            notes.append("initial weights: in the file but not in the model, ignored: "
                         + _listing(groups))
        return notes


class WeightsCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that refuses what is no checkpoint and keeps what the load
    did not fit (``report``). For loading initial weights, not for saving."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model, save_dir="", save_to_disk=False)
        self.report: LoadReport | None = None
        self._file = ""

    def load(self, path, *args, **kwargs):
        self._file, self.report = str(path), None
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        try:
            data = super()._load_file(filename)
        except Exception as e:  # noqa: BLE001 - unreadable in any way: not a checkpoint
            raise WeightsMismatch(f"{filename}: not a checkpoint ({type(e).__name__}: {e}). "
                                  "Expected a detectron2 .pth/.pkl or a Caffe2 .pkl") from e
        state = data.get("model") if isinstance(data, Mapping) else None
        if not isinstance(state, Mapping) or not state:
            found = type(state).__name__ if isinstance(data, Mapping) else type(data).__name__
            raise WeightsMismatch(f"{filename}: not a checkpoint: it holds a {found}, not a "
                                  "mapping of tensor names to tensors")
        for k, v in state.items():
            if not isinstance(k, str) or not isinstance(v, (np.ndarray, torch.Tensor)):
                raise WeightsMismatch(f"{filename}: not a checkpoint: entry {k!r} is a "
                                      f"{type(v).__name__}, not a tensor")
        return data

    def _load_model(self, checkpoint):
        heuristics = bool(checkpoint.get("matching_heuristics", False))
        if heuristics:
            # what DetectionCheckpointer does, here so that the aligned names are known
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(), checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2")
            checkpoint["matching_heuristics"] = False
        file_state = dict(checkpoint["model"])  # the loader pops from its own copy
        incompatible = super()._load_model(checkpoint)
        model_keys = list(self.model.state_dict())
        reshaped = {k for k, _, _ in incompatible.incorrect_shapes}  # also "missing" to torch
        missing = [k for k in incompatible.missing_keys
                   if k not in reshaped and not k.endswith("num_batches_tracked")]
        self.report = LoadReport(file=self._file,
                                 reinitialised=[(k, tuple(t), tuple(o))
                                                for k, t, o in incompatible.incorrect_shapes],
                                 missing=missing, unexpected=list(incompatible.unexpected_keys),
                                 model_keys=model_keys)
        self._check_trunk(file_state, heuristics)
        return incompatible

    def _check_trunk(self, file_state: dict, heuristics: bool) -> None:
        rep = self.report
        trunk = trunk_keys(self.model)
        model_state = self.model.state_dict()
        prefixes = tuple(trunk_prefixes(self.model))
        shapes = {k: (t, o) for k, t, o in rep.reinitialised}
        missing = set(rep.missing)
        bad = [k for k in trunk if k in shapes or k in missing]
        extra = [k for k in rep.unexpected
                 if k.startswith(prefixes) or (heuristics and _C2_TRUNK.match(k))]
        if not bad and not extra:
            return
        if bad:
            key = bad[0]
            if key in shapes:
                theirs, ours = shapes[key]
                why = f"shape {_fmt(theirs)} in the file, {_fmt(ours)} in the model"
            else:
                # a Caffe2 name whose shape differed was left unmatched under its own name
                cands = [u for u in rep.unexpected if key == u or key.endswith("." + u)]
                if cands:
                    u = max(cands, key=len)
                    why = (f"the file's {u} is {_fmt(_shape(file_state[u]))}, the model's "
                           f"{_fmt(_shape(model_state[key]))}")
                else:
                    why = "not in the file"
        else:
            key, why = extra[0], "in the file, but the model's trunk has no such tensor"
        counts = f"{len(bad)} of {len(trunk)} trunk tensors differ or are missing"
        if extra:
            counts += f", {len(extra)} of the file's find no place in the model"
        hint = ("Weights for another backbone? Use this backbone's zoo or ImageNet file, or "
                "weights=scratch")
        if ".norm." in key:
            hint = ("The trunk's norm layers differ from the file's: weights.path takes the "
                    "norm from the weights group (weights=zoo or imagenet: frozen BatchNorm; "
                    "scratch: GroupNorm)")
        raise WeightsMismatch(f"{self._file}: its trunk does not fit this model ({counts}); "
                              f"first: {key}: {why}. {hint}")


def load_initial_weights(model: torch.nn.Module, path: str) -> LoadReport | None:
    """Load ``path`` into ``model`` (its weights only, as a run without a checkpoint to resume
    does: detectron2's ``resume_or_load`` with MODEL.WEIGHTS). ``""``: nothing, returns None.
    Raises WeightsMismatch for a file that is no checkpoint or does not fit the trunk."""
    if not path:
        return None
    ckpt = WeightsCheckpointer(model)
    ckpt.load(path, checkpointables=[])
    return ckpt.report


def write_notes(output_dir: str | Path, notes: list[str]) -> None:
    """Keep the first load's notes next to the checkpoints, for a resumed process."""
    from contracts.fsutil import write_json

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(output_dir) / NOTES_FILE, notes)


def read_notes(output_dir: str | Path) -> list[str]:
    """The notes ``write_notes`` kept ([] if none)."""
    try:
        notes = json.loads((Path(output_dir) / NOTES_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [str(n) for n in notes] if isinstance(notes, list) else []


def trained_with_bn(path: str | Path) -> bool:
    """Whether the trunk in ``path`` was trained with BatchNorm: it holds BatchNorm statistics,
    or Caffe2's ``*_bn_s`` blobs (zoo and ImageNet files, fine-tunes of them). False for a run
    trained from scratch (GroupNorm: norm weights without statistics), and for a file that
    cannot be read (the load itself then says what is wrong)."""
    try:
        data = DetectionCheckpointer(torch.nn.Module())._load_file(str(path))
        keys = list((data.get("model") or {}).keys())
    except Exception:  # noqa: BLE001 - the real load reports it, with the file's name
        return False
    return any(k.endswith(("running_mean", "_bn_s")) for k in keys)
