"""The data a trial trains on, as the job driver hands it to every trial.

Its own module, without torch: the driver builds it before its search and should not pay
torch's import to do so (tests/jobs/test_driver_imports.py); the training loop
(``jobs/train.py``) turns it into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jobs.spec import AugmentationSpec
from jobs.tasks import Objective

if TYPE_CHECKING:
    from jobs.checkpoint import StateDict


@dataclass(frozen=True)
class TrainData:
    """Inputs shaped ``(rows, *example_shape)``; targets as the objective wants them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    objective: Objective | None = None  # None: classification into n_classes
    augmentation: AugmentationSpec | None = None
    init_state: StateDict | None = None  # transfer learning: the parent model's weights

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def task(self) -> Objective:
        return self.objective or Objective("classification", self.n_classes)
