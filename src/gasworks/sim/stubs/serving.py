"""A local HTTP stub served by a real uvicorn in a thread of this process, on a free port."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

START_WAIT_S = 10.0
STOP_WAIT_S = 10.0


class ServedApp:
    def __init__(self, app: ASGIApp) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"stub-{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServedApp":
        self.thread.start()
        deadline = time.monotonic() + START_WAIT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the stub on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=STOP_WAIT_S)


@contextmanager
def served_in_thread(app: ASGIApp) -> Iterator[str]:
    """A real uvicorn server for `app` on a free local port; yields its base URL."""
    served = ServedApp(app).start()
    try:
        yield served.base_url
    finally:
        served.stop()
