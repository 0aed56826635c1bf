"""Development tools of context-assistant: what CI and developers run, never the jobs or the app.

Installed with ``pip install -e ./tools`` (``requirements-dev.txt`` does it), so the runtime wheel the bundle
deploys stays free of them.
"""
