"""Rate-distortion evaluation: metrics, classical-codec anchors, BD-rate, RD curves and plots.

The sub-modules are independent and import their heavy dependencies lazily, so that
``stereodsc.eval.metrics`` and ``stereodsc.eval.preprocess`` work with numpy (and opencv) alone:

- ``metrics``: PSNR, MS-SSIM (pytorch_msssim formulation), bpp.
- ``preprocess``: the paper protocol (crop + resize to 128x256), padding and cropping.
- ``anchors``: JPEG, JPEG 2000, WebP, AVIF, JPEG XL, HEVC intra 4:4:4 with lean payload counts.
- ``bdrate``: Bjøntegaard delta rate / quality (PCHIP or cubic).
- ``rd``: per-image records, per-method curves, the BD-rate table, ``results.json``.
- ``plots``: RD curve PNGs.
- ``learned``: our codecs through the deployed path (edge graph, rANS, wire, host graph): real bytes.
- ``run``: ``stereodsc eval``: learned codecs and anchors on the same images, results.json, plots.
- ``visualize``: common vs private information (NDIC, NDIC-CAM), DSIN's side_syn, correlation vs gain.
"""
