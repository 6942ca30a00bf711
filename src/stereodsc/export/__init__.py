"""Export trained checkpoints to a deployable bundle: edge and host ONNX graphs, integer CDF tables,
a hashed manifest, and a parity check of every graph against the torch model (torch needed here
only; camera boards and hosts load the bundle with `stereodsc.bundle`).

What each model exports (all graphs opset 18 by default, torch's dynamo exporter):

- balle2017 ("intra"), ndic and ndic_cam with patch_mode="fixed" ("side_info"): one edge graph
  and one host graph per quality, both taking any padded size (dynamic H, W).
- dsin ("side_info"): dynamic edge graph; one host graph per padded size in ``sizes`` (its
  SI-Finder has shape-dependent loops), decoder + SI-Finder + SI-Net in one graph.
- ndic_cam with patch_mode="grid": both graphs fixed at its training image_size.
- scale-hyperprior models (balle2018, ndic/ndic_cam with backbone="balle2018"): the edge graph
  outputs z and y (int32), the host graph takes y (+ side); per quality the bundle also holds z's
  tables (one row per channel), y's tables (one row per scale level) and ``scale_path.npz``, the
  bit-exact integer h_s (`stereodsc.entropy.IntegerScaleNet`, calibrated on the sample images' z)
  that both ends run on the integer z to pick y's rows. Parity adds z's symbols and the integer
  vs float scale path (row agreement, rate cost) to the manifest and the report.
"""

from stereodsc.export.exporter import DEFAULT_SIZES, ExportReport, ParityError, export_bundle
from stereodsc.export.on_the_fly import open_model
from stereodsc.export.parity import ParityResult

__all__ = ["DEFAULT_SIZES", "ExportReport", "ParityError", "ParityResult", "export_bundle", "open_model"]
