"""Brain tumour SegResNet: synthetic head MR phantoms, training and evaluation."""
