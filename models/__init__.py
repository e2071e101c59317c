"""Training and ONNX export of the fraud models (LightGBM and a small MLP).

Not part of the installed ``streams`` package: it needs the ``train`` extra
(lightgbm, scikit-learn, onnx, skl2onnx, onnxmltools). ``streamscore model train``
imports it lazily. Artifacts land in ``models/artifacts/`` and are served by
``streams.scoring``.
"""

from __future__ import annotations

from models.synthetic import synthetic_feature_service, synthetic_training_table, train_synthetic
from models.train import MODEL_KINDS, TrainConfig, TrainResult, next_version, train

__all__ = [
    "MODEL_KINDS",
    "TrainConfig",
    "TrainResult",
    "next_version",
    "synthetic_feature_service",
    "synthetic_training_table",
    "train",
    "train_synthetic",
]
