"""Model zoo for onnx2burst: Fashion-MNIST data helpers, ANN architectures and the
training script that exports them to ONNX (``python -m models.train --help``).

Importing :mod:`models` needs only numpy; :mod:`models.archs` and :mod:`models.train`
need torch.
"""
from .data import (FMNIST_MEAN, FMNIST_STD, FMNIST_SHAPE, DatasetNotFoundError,
                   load_fmnist, load_fmnist_raw, load_fmnist_test, load_fmnist_test_npz,
                   load_fmnist_calib_npz, normalize, load_fmnist_dvs, load_fmnist_dvs_npz, normalize_dvs)

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "FMNIST_SHAPE", "DatasetNotFoundError",
           "load_fmnist", "load_fmnist_raw", "load_fmnist_test", "load_fmnist_test_npz",
           "load_fmnist_calib_npz", "normalize", "load_fmnist_dvs", "load_fmnist_dvs_npz", "normalize_dvs"]
