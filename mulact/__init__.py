"""mulact: active learning for semantic segmentation with multi-class label queries.

Subpackages: ``mulact.ops`` (fused region ops), ``mulact.data`` (datasets, superpixels,
oracle), ``mulact.al`` (pool, acquisition, loop), ``mulact.engine`` (training, evaluation).
Importing ``mulact`` touches neither the network nor a GPU.
"""

__version__ = "0.1.0"
