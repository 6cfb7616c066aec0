"""Accuracy of flashprefill on a real model: ``python -m flashprefill.eval --help`` (bench/ACCURACY.md)."""
