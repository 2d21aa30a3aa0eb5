"""dicomnode: a PACS-integrated DICOM AI node.

Where a C-STORE goes, from socket to SEG in the PACS:

``receiver`` (DICOM Upper Layer, pynetdicom) -> ``store`` (fsync, index row)
-> ``assembly`` (study complete after quiet time) -> ``routing`` (one job per
study and pipeline) -> ``jobs`` (lease, heartbeat) -> ``workers`` running
``pipelines/`` -> ``results/`` writers -> ``delivery`` (C-STORE SCU with
retries) back to the PACS.
"""

__version__ = "0.1.0"
