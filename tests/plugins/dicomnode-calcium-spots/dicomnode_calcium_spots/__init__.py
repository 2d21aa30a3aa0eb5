"""Calcified spots on CT: an example of a pipeline installed beside dicomnode, not inside it."""
