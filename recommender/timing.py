"""Server-Timing: views and template tags record how long their steps took; one middleware reports them."""


def record_timing(request, **seconds: float) -> None:
    timings = getattr(request, "server_timing", None)
    if timings is not None:
        timings.update(seconds)


class ServerTimingMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.server_timing = {}
        response = self.get_response(request)
        if request.server_timing:
            response["Server-Timing"] = ", ".join(
                f"{name};dur={seconds * 1000:.1f}" for name, seconds in request.server_timing.items()
            )
        return response
