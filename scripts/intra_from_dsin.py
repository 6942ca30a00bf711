"""Make a native intra codec's committed weights the backbone of the DSIN trained jointly on it.

DSIN at a native quality trains its whole backbone (camera encoder, entropy model, decoder and
post-filter) together with its SI-Net. Run without side information that backbone is a better intra
codec than the intra run on its own (held-out rd loss 1-3 % lower at every shipped lambda), and when
the intra codec *is* DSIN's backbone a rig runs one camera graph per quality on every board, a
dependent frame whose side image is missing decodes as an intra frame, and the bundle stores the
graph once. So this writes weights/balle2018_native_l<lambda>.pt from weights/dsin_native_l<lambda>.pt,
validated on the intra run's own held-out set: `make native-bundle` exports it, and
`stereodsc train --config configs/balle2018_native_l<lambda>.toml --resume` continues from it
(training it alone parts it from DSIN's backbone again: then the bundle ships two camera graphs).
`make native-weights` runs this after each DSIN run; the intra run's own runs/<run>/latest.pt, if any,
is moved to alone.pt beside it so that --resume starts from DSIN's backbone.

    python scripts/intra_from_dsin.py 0.002 0.005
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stereodsc.train.checkpoint import load_checkpoint, save_checkpoint
from stereodsc.train.config import load_config
from stereodsc.train.loop import Trainer, compact


def intra_from_dsin(lmbda: str) -> dict[str, float]:
    """Write the intra codec's [train] keep at `lmbda` from DSIN's backbone; return its validation."""
    cfg = load_config(f"configs/balle2018_native_l{lmbda}.toml")
    keep = cfg.train.keep_path
    if keep is None:
        raise SystemExit(f"{cfg.source}: [train] keep is not set; name the committed checkpoint to write")
    latest = cfg.train.latest_path
    if latest.is_file():  # the intra run trained on its own: --resume would continue from it, not from here
        alone = latest.replace(latest.with_name("alone.pt"))
        print(f"{latest} (the intra codec trained alone) moved to {alone}")
    dsin_path = f"weights/dsin_native_l{lmbda}.pt"
    dsin = load_checkpoint(dsin_path)
    trainer = Trainer(cfg, progress=False)
    trainer.warm_start(dsin_path)  # every tensor of the intra model: all of DSIN but its SI-Net
    trainer.step = trainer.moments_from = dsin["step"]  # a resume starts fresh moments, with a warm-up
    trainer.cpu_seconds = dsin["cpu_seconds"]
    val = trainer.validate()
    trainer.best_val = val["loss"]
    trainer.metrics = {"step": trainer.step, "val": val, "backbone_of": dsin_path}
    save_checkpoint(Path(keep), compact(trainer.state()))
    return val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lmbdas", nargs="+", help="the rate points, as in the configs' names (e.g. 0.002)")
    for lmbda in parser.parse_args().lmbdas:
        print(lmbda, json.dumps({k: round(v, 4) for k, v in intra_from_dsin(lmbda).items()}))


if __name__ == "__main__":
    main()
