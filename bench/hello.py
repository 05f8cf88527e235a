"""A hello-world ASGI app, served by gunicorn with the same uvicorn workers as the site: the HTTP floor
(what the clients and the HTTP server cost by themselves)."""

HELLO = b'{"prediction": 1.0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(HELLO)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the request body, as a real app does
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": HELLO})
