"""UniMiSS self-supervised pre-training (Xie et al., ECCV 2022, Sec. 3.3): a student MiT and its momentum
teacher, DINO heads on the final SSL token, the centred cross-entropy of Eq. 3-6 and the 2D/3D alternation.

    from medssl_train.unimiss import PretrainConfig, pretrain_unimiss
"""

from medssl_train.unimiss.config import PretrainConfig
from medssl_train.unimiss.head import DINOHead, SSLNetwork
from medssl_train.unimiss.loss import UniMiSSLoss, centred_cross_entropy
from medssl_train.unimiss.pretrain import PretrainResult, pretrain_unimiss
from medssl_train.unimiss.teacher import ema_update
from medssl_train.unimiss.trainer import UniMiSSTrainer

__all__ = [
    "DINOHead",
    "PretrainConfig",
    "PretrainResult",
    "SSLNetwork",
    "UniMiSSLoss",
    "UniMiSSTrainer",
    "centred_cross_entropy",
    "ema_update",
    "pretrain_unimiss",
]
