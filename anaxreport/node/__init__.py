"""The DICOM node (``anaxreport serve``): receive images from a PACS, send results back.

ingest → gate → model → rules → render, behind a storage SCP with a durable spool, a worker,
and one sender per destination (DIMSE C-STORE, DICOMweb STOW-RS, FHIR). See
templates/node.toml for the configuration and :mod:`.spool` for the durability argument.
"""

from .config import (
    DicomDestination,
    FhirDestination,
    MetricsConfig,
    NodeConfig,
    RetryPolicy,
    StowDestination,
    TlsConfig,
    load_node_config,
)
from .service import Node

__all__ = [
    "DicomDestination",
    "FhirDestination",
    "MetricsConfig",
    "Node",
    "NodeConfig",
    "RetryPolicy",
    "StowDestination",
    "TlsConfig",
    "load_node_config",
]
