"""Diabetic retinopathy grading: synthetic fundus data, training and evaluation of models/fundus_dr."""
