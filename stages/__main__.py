"""``python -m stages`` runs the ``vrnn`` CLI (for environments without the console script)."""

from stages.cli import app

app(prog_name="vrnn")
