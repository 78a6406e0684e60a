"""Shared by every process of the project: the run-storage contract and log formatting."""
