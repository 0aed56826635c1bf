"""Start the context-assistant web app: ``python app.py``.

This is the Databricks App entry point (app.yaml runs it from the app's source folder, where the package is
not pip-installed) and works the same from a source checkout. It puts ``src/`` first on ``sys.path`` so the
code next to this file is what runs, then hands over to :func:`context_assistant.web.main`.
"""

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "src"
if SOURCE.is_dir() and str(SOURCE) not in sys.path:
    sys.path.insert(0, str(SOURCE))

from context_assistant.web import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
