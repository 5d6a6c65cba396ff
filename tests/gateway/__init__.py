"""A package, so the folder's `scope="package"` fixture (its shared mesh) ends with the folder.

Without this file pytest treats "package" as "session": the mesh lived on, with its own rag
indexer on the session's database, while later folders ran (it took tests/rag's documents).
The folder's helper modules are importable by name through `pythonpath` in pyproject.toml.
"""
