"""Lean inference side: reads exported artifacts, never imports torch."""
