"""Export trained checkpoints to a deployable bundle: edge and host ONNX graphs, integer CDF tables,
a hashed manifest, and a parity check of every graph against the torch model (torch needed here
only; camera boards and hosts load the bundle with `stereodsc.bundle`).

What each model exports (all graphs opset 18 by default, torch's dynamo exporter):

- balle2017 ("intra"), ndic and ndic_cam with patch_mode="fixed" ("side_info"): one edge graph
  and one host graph per quality, both taking any padded size (dynamic H, W).
- dsin ("side_info"): dynamic edge graph; one host graph per padded size in ``sizes`` (its
  SI-Finder has shape-dependent loops), decoder + SI-Finder + SI-Net in one graph.
- ndic_cam with patch_mode="grid": both graphs fixed at its training image_size.
- scale-hyperprior models (balle2018, ndic/ndic_cam with backbone="balle2018"): refused until the
  integer scale-index path exists.
"""

from stereodsc.export.exporter import DEFAULT_SIZES, ExportReport, ParityError, export_bundle
from stereodsc.export.parity import ParityResult

__all__ = ["DEFAULT_SIZES", "ExportReport", "ParityError", "ParityResult", "export_bundle"]
