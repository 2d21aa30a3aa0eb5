"""Lung nodule detector: synthetic chest phantoms, training and FROC evaluation."""
