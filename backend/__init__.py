"""MonoNPHM backend: video → per-frame MonoNPHM fits → result package.

This package root stays free of torch: the Blender add-on imports the contract modules
(`conventions`, `result_format`, `protocol`, `landmark_tables`, `arkit`) with Blender's Python.
"""

__version__ = "0.1.0"
