"""Orchestration: the parent flow, run lock and markers, manifest, report, reproduce."""
