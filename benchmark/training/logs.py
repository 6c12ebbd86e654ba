"""What a run shows on the terminal, and what goes to its log file.

The terminal gets one line per run: a progress bar of training iterations with the current
loss, then the run's AP (``summary_line``); warnings and errors are printed in full.
detectron2's (and fvcore's) INFO logs, config and model dumps go to ``<run dir>/d2/log.txt``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# loggers whose INFO output is detectron2's training chatter (config, model, every 20 iterations)
CHATTY = ("detectron2", "d2", "fvcore", "iopath")
LOG_NAME = "log.txt"


def route_logs(log_dir: Path) -> Path:
    """INFO and up of detectron2/fvcore into ``log_dir/log.txt``; WARNING and up also to stderr.
    Idempotent (a second call in one process replaces the handlers). Returns the file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_NAME
    to_file = logging.FileHandler(path)
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s",
                                           datefmt="%m/%d %H:%M:%S"))
    to_err = logging.StreamHandler(sys.stderr)
    to_err.setLevel(logging.WARNING)
    to_err.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in CHATTY:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()
        lg.addHandler(to_file)
        lg.addHandler(to_err)
        # INFO enabled: DefaultTrainer then does not call setup_logger (its stdout handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    return path


def progress_text(label: str, done: int, total: int, loss: float | None, width: int = 24) -> str:
    """``R50-FPN  [#########---------------]  120/300  loss 1.234``: one run's training line."""
    filled = int(width * done / total) if total else width
    tail = f"  loss {loss:.3f}" if loss is not None else ""
    return f"{label}  [{'#' * filled}{'-' * (width - filled)}]  {done}/{total}{tail}"


# Runs of one sweep that share this process's terminal (the joblib launcher runs several at
# once): one line redrawn in place by each would overwrite the others'.
_shared = {"runs": 1}


def share_terminal(runs: int) -> None:
    """Declare how many runs draw on this terminal at once (1: this one alone)."""
    _shared["runs"] = max(1, int(runs))


def progress_hook(label: str, stream=None):
    """A detectron2 hook drawing ``label``'s training progress as one line that redraws in place
    (iterations done, current total loss); drawn only where ``stream`` (stderr) is a terminal.
    Where other runs share the terminal (``share_terminal``), it prints a whole line at each
    quarter of the iterations instead, so the runs' lines do not overwrite each other."""
    from detectron2.engine import HookBase

    out = stream or sys.stderr
    in_place = _shared["runs"] == 1

    class ProgressBar(HookBase):
        def before_train(self) -> None:
            self.on = bool(getattr(out, "isatty", lambda: False)())
            self.done = self.trainer.start_iter
            self._draw(None)

        def after_step(self) -> None:
            self.done += 1
            try:
                loss = self.trainer.storage.history("total_loss").latest()
            except KeyError:
                loss = None
            self._draw(loss)

        def after_train(self) -> None:
            if self.on and in_place:
                out.write("\n")
                out.flush()

        def _draw(self, loss) -> None:
            if not self.on:
                return
            total = self.trainer.max_iter
            if in_place:
                out.write("\r" + progress_text(label, self.done, total, loss))
            elif self.done in {round(total * q / 4) for q in range(1, 5)}:
                out.write(progress_text(label, self.done, total, loss) + "\n")
            else:
                return
            out.flush()

    return ProgressBar()


def summary_line(res: dict) -> str:
    """``R50-FPN  ok  segm AP  left lung 57.1  right lung 72.3  infection 0.0  (312 s training)``
    (the classes of contracts.catalog, in id order) or the failure."""
    from contracts.catalog import CLASSES

    name = res.get("backbone") or "run"
    if res.get("status") != "ok":
        err = res.get("error") or {}
        return f"{name}  FAILED at {err.get('where')}: {err.get('type')}: {str(err.get('message'))[:200]}"
    pc = ((res.get("metrics") or {}).get("segm") or {}).get("per_class") or {}

    def ap(c: str) -> str:
        v = (pc.get(c) or {}).get("AP")
        return "n/a" if v is None else f"{v:.1f}"

    wall = (res.get("timing") or {}).get("train_wall_s")
    took = f"  ({wall:.0f} s training)" if isinstance(wall, (int, float)) else ""
    per_class = "  ".join(f"{c.label} {ap(c.name)}" for c in CLASSES)
    return f"{name}  ok  segm AP  {per_class}{took}"
