"""Networks (plain ``nn.Module``s): backbones, heads, affinity, AuxSegNet / AuxSegNet+, SSNet."""

from wsss_lightning.models.affinity import CrossTaskAffinity
from wsss_lightning.models.auxsegnet import AuxSegNet, AuxSegNetOutput, AuxSegNetPlus
from wsss_lightning.models.resnet38 import ResNet38
from wsss_lightning.models.timm_backbone import TimmBackbone

__all__ = ["AuxSegNet", "AuxSegNetOutput", "AuxSegNetPlus", "CrossTaskAffinity", "ResNet38", "TimmBackbone"]
