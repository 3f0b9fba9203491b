"""Renderers: a :class:`~anaxreport.report.Report` in, one output format out.

``text`` (Jinja2), ``fhir`` (Bundle, R4B or R5), ``sr`` (DICOM TID 1500) and ``gsps``
(Grayscale Softcopy Presentation State). Each reads only the Report (DESIGN.md §2).
"""
