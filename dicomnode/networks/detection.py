"""A small 3D RetinaNet for CPU inference: the Model Zoo detector, narrower.

The MONAI Model Zoo ``lung_nodule_ct_detection`` bundle builds
``RetinaNet(feature_extractor=resnet_fpn_feature_extractor(resnet50(...), 3, False, [1, 2]))``:
a ResNet-50 backbone whose first two stages feed a feature pyramid with 256
channels, three pyramid levels (the two stages and a max-pooled level), and
classification/regression heads of four 3x3x3 convolutions each at that
width. :func:`small_retinanet` keeps every part of that definition (same
RetinaNet class, same stages used, same strides, same number of levels and
anchors) and makes it narrow: basic residual blocks, one per stage, and a
pyramid of ``fpn_channels`` (the heads' width, which dominates the cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monai.apps.detection.networks.retinanet_network import RetinaNet


def small_retinanet(
    *,
    spatial_dims: int = 3,
    num_classes: int = 1,
    num_anchors: int = 3,
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    fpn_channels: int = 32,
    size_divisible: Sequence[int] = (16, 16, 8),
    returned_layers: Sequence[int] = (1, 2),
) -> RetinaNet:
    """A RetinaNet with a basic-block ResNet backbone and a narrow FPN.

    Parameters
    ----------
    spatial_dims, num_classes, num_anchors, size_divisible
        As in :class:`monai.apps.detection.networks.retinanet_network.RetinaNet`.
    block_inplanes
        Channels of the four ResNet stages (only ``returned_layers`` are kept).
    fpn_channels
        Width of the feature pyramid and of the detection heads.
    returned_layers
        ResNet stages that feed the pyramid; ``(1, 2)`` as in the Model Zoo,
        which with the extra max-pooled level gives feature map scales 1, 2, 4.
    """
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
    from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool
    from monai.networks.nets.resnet import ResNet

    backbone = ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=list(block_inplanes),
        spatial_dims=spatial_dims,
        n_input_channels=1,
        # MONAI annotates these as tuple[int], but takes one value per spatial dimension.
        conv1_t_stride=(2, 2, 1),  # type: ignore[arg-type]
        conv1_t_size=(7, 7, 7),  # type: ignore[arg-type]
    )
    # Basic blocks do not expand channels: stage n has block_inplanes[n - 1] channels.
    feature_extractor = BackboneWithFPN(
        backbone,
        return_layers={f"layer{k}": str(v) for v, k in enumerate(returned_layers)},
        in_channels_list=[int(block_inplanes[k - 1]) for k in returned_layers],
        out_channels=fpn_channels,
        spatial_dims=spatial_dims,
        extra_blocks=LastLevelMaxPool(spatial_dims),
    )
    return RetinaNet(
        spatial_dims=spatial_dims,
        num_classes=num_classes,
        num_anchors=num_anchors,
        feature_extractor=feature_extractor,
        size_divisible=list(size_divisible),
        use_list_output=False,
    )
