"""Helpers for tests and benchmarks: real DICOM and database peers on loopback.

:mod:`.peers` starts and drives DCMTK, Orthanc and PostgreSQL on free loopback
ports, :mod:`.factories` writes database rows, :mod:`.node` builds node
settings rooted in a temporary folder. It ships in the package so that
``tests/`` and ``bench/`` share one copy; it is not used by the node itself,
and nothing here is imported by ``import dicomnode``.
"""
