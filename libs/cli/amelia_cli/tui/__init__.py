"""`amelia tui`: the dashboard's power in a terminal (Textual), over the gateway's public API.

Like the dashboard, it speaks only the gateway's HTTP/JSON and WebSocket protocol
(docs/gateway.md), which proves the gateway serves any frontend. This module stays light
(Textual is imported when the command runs), so `amelia --help` stays quick.
"""

from __future__ import annotations

from typing import Any

import typer

from amelia_cli.located import running_mesh
from amelia_cli.mesh import client_host
from amelia_common.settings import get_settings


def gateway_url() -> str:
    """The local gateway's address: the running `amelia up`'s for this folder, else the
    settings' (found the way every command finds the mesh: `amelia_cli.located`)."""
    settings, _ = running_mesh()
    return f"http://{client_host(settings)}:{settings.PORT}"


def url_option() -> Any:
    """`--url` (or AMELIA_GATEWAY_URL): the gateway a command speaks to."""
    return typer.Option(
        "",
        "--url",
        envvar="AMELIA_GATEWAY_URL",
        help=(
            "The gateway, e.g. http://127.0.0.1:8000 (default: the running mesh's, else HOST "
            "and PORT)."
        ),
    )


def tui(url: str = url_option()) -> None:
    """Runs, events, documents and threads in a terminal UI (keyboard-first; ? shows the keys)."""
    from amelia_cli.tui.app import AmeliaApp

    AmeliaApp(url or gateway_url(), get_settings().api_token).run()
