"""A trained run applied to CT volumes: NIfTI label volumes and volumes.csv (``make predict``).

    python -m benchmark.predict --run <run dir> --input <NIfTI file or folder> --out <dir>

What it does and writes: ``benchmark.evaluation.apply``."""

from __future__ import annotations

import argparse
import sys

from benchmark.evaluation.apply import VOLUMES_CSV, PredictError, apply_run
from contracts import fsutil
from contracts.errors import ConfigError
from contracts.predictions import FILENAME as PREDICTIONS_FILE
from converters.errors import ConversionError
from converters.volume import MAX_VOXELS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished run dir trained with keep_checkpoint=true")
    ap.add_argument("--input", required=True, help="a NIfTI file (.nii/.nii.gz) or a folder of them")
    ap.add_argument("--out", required=True, help="output folder (new, empty, or an earlier OUT of make predict)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the run's auto)")
    ap.add_argument("--max-voxels", type=int, default=MAX_VOXELS,
                    help=f"most voxels an input's header may claim (default {MAX_VOXELS:,}; checked before reading it)")
    a = ap.parse_args(argv)
    try:
        out = apply_run(a.run, a.input, a.out, a.device, a.batch_size, a.max_voxels)
    except (PredictError, ConversionError, fsutil.NotOwned, fsutil.OutputBusy, ConfigError) as e:
        print(f"error: {e}; nothing written.", file=sys.stderr)
        return 2
    except OSError as e:
        if (msg := fsutil.output_error(e)) is None:
            raise
        print(f"error: writing OUT {a.out}: {msg}", file=sys.stderr)
        return 1
    n = len(list(out.glob("*.nii.gz")))
    print(f"wrote {n} label volume(s), {VOLUMES_CSV} and {PREDICTIONS_FILE} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
