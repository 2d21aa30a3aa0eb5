"""Training and evaluation scripts for the shipped model bundles (one folder per task)."""
