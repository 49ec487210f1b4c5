"""Distillation: pseudo-labels stamped with the teacher's fingerprint, student initialisation, KL + CE."""
