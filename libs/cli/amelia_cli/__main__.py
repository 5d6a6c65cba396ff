"""`python -m amelia_cli` is `amelia`."""

from amelia_cli.main import app

app()
