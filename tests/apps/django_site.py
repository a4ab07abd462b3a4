"""A minimal Django project (settings in code, no database) for subinterpreter shards.

Each interpreter imports its own copy of this module, so each configures its own
Django.  Every answer says which interpreter and thread served it: sync views run in
asgiref's thread executor (and asgiref starts a daemon thread per request to join
it), async views on the shard's event loop.  WebSockets go to Channels consumers, one
async and one sync (the sync one runs through asgiref's executor as well).
"""

from __future__ import annotations

import threading

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="tests-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    DATABASES={},
    USE_TZ=True,
    LOGGING_CONFIG=None,  # (shardserve's logging stays as it is)
)
django.setup(set_prefix=False)

from channels.generic.websocket import (  # noqa: E402 - after settings
    AsyncWebsocketConsumer,
    WebsocketConsumer,
)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def _interpreter_id() -> int:
    try:
        from concurrent import interpreters
    except ImportError:
        from interpreters_backport import interpreters
    return int(interpreters.get_current().id)


def _where(view: str) -> dict:
    return {
        "view": view,
        "interpreter": _interpreter_id(),
        "thread": threading.current_thread().name,
    }


def sync_view(request):
    return JsonResponse(_where("sync"))


async def async_view(request):
    return JsonResponse(_where("async"))


async def stream_view(request):
    count = int(request.GET.get("n", "5"))

    async def parts():
        for index in range(count):
            yield f"part {index}\n".encode()

    return StreamingHttpResponse(parts(), content_type="text/plain")


urlpatterns = [
    path("sync", sync_view),
    path("async", async_view),
    path("stream", stream_view),
]


class AsyncEcho(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=f"{_interpreter_id()}:{text_data}")


class SyncEcho(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=f"{_interpreter_id()}:{threading.current_thread().name}:{text_data}")


websocket_urls = [path("ws", AsyncEcho.as_asgi()), path("ws-sync", SyncEcho.as_asgi())]
app = ProtocolTypeRouter({"http": get_asgi_application(), "websocket": URLRouter(websocket_urls)})
