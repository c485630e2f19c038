"""Old name of `restorejax.evaluation.trained_restorer`, kept only while callers move (delete it then).

A network's input padding and output scale are its own facts now: `models.build(cfg).input_padding()`
and `.output_scale()` (`restorejax.models.restorer.Restorer`).
"""

import ml_collections

from restorejax import models
from restorejax.evaluation.trained_restorer import TrainedRestorer as Restorer  # noqa: F401
from restorejax.evaluation.trained_restorer import load, mesh_and_sharding, place_params  # noqa: F401
from restorejax.models import restorer


def input_padding(cfg: ml_collections.ConfigDict) -> tuple[int, str]:
  """(multiple, pad mode) of the network `config.model` builds (`Restorer.input_padding`)."""
  model = models.build(cfg)
  return model.input_padding() if isinstance(model, restorer.Restorer) else (1, "constant")


def output_scale(cfg: ml_collections.ConfigDict) -> int:
  """Output / input size ratio of the network `config.model` builds (`Restorer.output_scale`)."""
  model = models.build(cfg)
  return model.output_scale() if isinstance(model, restorer.Restorer) else 1
