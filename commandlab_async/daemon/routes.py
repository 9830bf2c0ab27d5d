"""Which endpoint serves a request: the route table."""

from __future__ import annotations

from .desktop import handle_desktop
from .errors import RequestError
from .exec import handle_exec, handle_processes
from .files import handle_get_file, handle_list, handle_put_file, handle_stat
from .protocol import (
    DESKTOP_PATH,
    EXEC_PATH,
    FILE_LIST_PATH,
    FILE_STAT_PATH,
    FILES_PATH,
    HEALTH_PATH,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PROCESSES_PATH,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .connections import Exchange
    from .http import Request


def handle_health(ex: Exchange) -> None:
    # The loop answers GET and HEAD itself; this row exists so others get 405.
    ex.send_json(200, ex.server.health_payload())


ROUTES: dict[str, dict[str, Callable[[Exchange], None]]] = {
    HEALTH_PATH: {"GET": handle_health, "HEAD": handle_health},
    EXEC_PATH: {"POST": handle_exec},
    FILES_PATH: {"GET": handle_get_file, "HEAD": handle_get_file, "PUT": handle_put_file},
    FILE_STAT_PATH: {"GET": handle_stat},
    FILE_LIST_PATH: {"GET": handle_list},
    DESKTOP_PATH: {"GET": handle_desktop, "POST": handle_desktop},
}


def find_endpoint(request: Request) -> Callable[[Exchange], None]:
    if request.path == PROCESSES_PATH or request.path.startswith(PROCESSES_PATH + "/"):
        return handle_processes
    methods = ROUTES.get(request.path)
    if methods is None:
        raise RequestError(NOT_FOUND, "no such endpoint")
    endpoint = methods.get(request.method)
    if endpoint is None:
        raise RequestError(
            METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed on {request.path}",
            allow=sorted(methods),
        )
    return endpoint
