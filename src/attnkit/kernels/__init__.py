"""Stateless attention math: arrays in, arrays out, one module per family.

Kernels never validate user input beyond what their math needs and never import a mechanism;
the mechanism classes in :mod:`attnkit.mechanisms` validate and then call these.
"""
