"""Labeling by people: the ``mulact-label`` web page (Flask), query export and answer import.

- :mod:`mulact.label.service` — leases, saving, undo, pictures (framework-independent).
- :mod:`mulact.label.app` — the Flask app and its JSON API.
- :mod:`mulact.label.render` — the query pictures (region outlined, surroundings dimmed).
- :mod:`mulact.label.cli` — ``mulact-label RUN_DIR`` / ``export`` / ``import``.

The query and answer files are defined in :mod:`mulact.al.answers`; README "Label your own
data" shows the workflow.
"""
