"""`stereodsc demo`: what side information buys, shown on the bundled KITTI sample.

Until trained weights ship, the demo trains two tiny codecs of the same size and budget, one
without side information (balle2017) and one with it (NDIC), on 10 frames of the sample, and
compares them on the 2 held-out frames. A second run reuses the checkpoints.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODELS = ("balle2017", "ndic")


def demo_config(name: str, out: Path, steps: int) -> dict:
    return {
        "model": {"name": name, "preset": "small", "options": {"N": 32, "M": 48}},
        "data": {"kind": "sample", "val_frames": 2, "protocol": "paper", "crop": [128, 128]},
        "train": {
            "steps": steps,
            "lmbda": 0.004,
            "distortion": "mse",
            "lr": 3e-4,
            "validate_every": max(1, steps // 3),
            "checkpoint_every": max(1, steps // 3),
            "out": str(out / name),
            "seed": 0,
        },
    }


def run_demo(out: Path, steps: int) -> int:
    from stereodsc.train.config import config_from_dict
    from stereodsc.train.loop import Trainer

    print(
        "stereodsc demo: no trained weights ship yet, so this trains two tiny codecs of the same size\n"
        f"(N=32, M=48) for {steps} steps each on the bundled KITTI sample (10 frames) and evaluates them\n"
        "on 2 held-out stereo pairs (both directions). Expect minutes on 2 CPU cores; reruns resume.\n"
    )
    results = {}
    for name in DEMO_MODELS:
        trainer = Trainer(config_from_dict(demo_config(name, out, steps), f"demo:{name}"))
        trainer.resume()
        resumed = f" (resumed at step {trainer.step})" if trainer.step else ""
        print(f"[{name}] training{resumed}")
        trainer.run()
        results[name] = trainer.validate()
    print(f"\n{'model':<12}{'side info':>10}{'val loss':>10}{'bpp (est.)':>12}{'PSNR dB':>9}{'MS-SSIM':>9}")
    for name, v in results.items():
        si = "yes" if name != "balle2017" else "no"
        print(f"{name:<12}{si:>10}{v['loss']:>10.4f}{v['bpp']:>12.4f}{v['psnr']:>9.2f}{v['ms_ssim']:>9.4f}")
    base, ndic = results["balle2017"]["loss"], results["ndic"]["loss"]
    print(
        f"\nrate-distortion loss with side information: {100 * (ndic - base) / base:+.1f}% vs without "
        f"(negative = better). Checkpoints and metrics.jsonl are in {out}/."
    )
    return 0
