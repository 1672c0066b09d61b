"""A seeded, bounded fuzz suite for the onnxfi CLI (issue 18): mutated models, .npz data, gate configs, plan
JSON files and SQLite stores, run through every command in forked, memory-limited children.

``tests/test_fuzz_slice.py`` runs a fixed slice; ``scripts/fuzz.py`` runs any number of cases. Modules:
:mod:`fuzz.mutators` (the damage), :mod:`fuzz.cases` (case i of seed s), :mod:`fuzz.runner` (fork, limit,
classify), :mod:`fuzz.session` (a whole run: corpus, cases, summary).
"""
