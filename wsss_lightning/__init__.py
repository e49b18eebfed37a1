"""wsss_lightning: weakly supervised semantic segmentation with saliency, on PyTorch Lightning.

Methods: SSNet (Zeng et al., ICCV 2019) and AuxSegNet / AuxSegNet+ (Xu et al., ICCV 2021 / TNNLS 2025).
"""

import os as _os

# albumentations phones home at import unless told not to (design §4); set before anything imports it.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
