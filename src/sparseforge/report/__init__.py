"""Per-layer sparsity, parameter and FLOP reports, computed from masks.

* :mod:`.model` -- the data model: :class:`LayerReport`, :class:`Report` (JSON, table);
* :mod:`.counting` -- counting from masks: :func:`sparsity_report` (a model, with FLOPs from one
  forward pass) and :func:`report_from_state_dict` (a checkpoint without its model);
* :mod:`.paths` -- :func:`report_for_path`: a run folder, checkpoint, ``state_dict`` file, saved
  report or compressed checkpoint (``sparseforge report PATH``);
* :mod:`.iso_flop` -- :func:`iso_flop_report`: a Sparse-IFT model's FLOPs next to the dense model's.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .counting import report_from_state_dict, sparsity_report
from .model import MODES, LayerReport, Report
from .paths import report_for_path

# the iso-FLOP check imports the transforms package: only when it is used
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(["IsoFlopReport", "IsoFlopRow", "iso_flop_report"], "iso_flop"),
                                    globals(), frozenset({"counting", "iso_flop", "model", "paths"}))

if TYPE_CHECKING:  # static analysers and IDEs see the eager import
    from .iso_flop import IsoFlopReport, IsoFlopRow, iso_flop_report

__all__ = ["LayerReport", "Report", "MODES", "sparsity_report", "report_from_state_dict", "report_for_path",
           "IsoFlopReport", "IsoFlopRow", "iso_flop_report"]
