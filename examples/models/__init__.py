"""The examples' models, in Flax linen.

`convnets`: the paper's BasicCNN, He et al.'s CIFAR ResNets, torchvision's ResNets, ResNeXt, Wide
ResNet and DenseNets, by name in `convnets.MODELS`.
"""
