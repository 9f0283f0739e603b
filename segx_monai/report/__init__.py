"""Interpretation report: an offline HTML page and a JSON summary of raw vs SegX localisation and SegU certainty."""

from segx_monai.report.interpretation import build_report, main, write_run_info

__all__ = ["build_report", "main", "write_run_info"]
