"""Shared pieces of cinelora: the typed config schema and loader, and the model families (core.models).

Importing this package changes nothing in the environment. The command-line entry points make hub
lookups offline with `core.offline.use_offline_defaults()` (called by `core.config.run_cli`), and
the Makefile exports the same variables; a user's own values win.
"""
