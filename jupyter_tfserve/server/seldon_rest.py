"""Seldon Core v1's prediction endpoint on the engine's REST port.

``POST /api/v1.0/predictions`` answers for the one model served (with several, a 400 names them),
``/seldon/{namespace}/{model}/api/v1.0/predictions`` for the model its path names, as Seldon's
ingress does. The body policy and the request path are TF Serving's (:class:`.rest.ModelHandler`):
credentials before the body, one decode with :mod:`~jupyter_tfserve.engine.codecs.seldon`, one
:meth:`Engine.predict`. Every error, refusals included, is Seldon's ``{"status": {...}}`` body.
"""

from __future__ import annotations

import re

from ..engine.codecs import seldon
from ..engine.codecs.json_body import parse_json_body
from ..engine.codecs.limits import DecodeBudget
from ..engine.engine import Target
from ..engine.errors import ServingError, invalid_argument
from ..wire import ROUTE_KEY_HEADER, VERSION_HEADER
from .rest import ModelHandler

_PATH = re.compile(r"^(?:/seldon/(?P<namespace>[^/]+)/(?P<model>[^/]+))?/api/v1\.0/predictions/?$")


class SeldonHandler(ModelHandler):
    """One SeldonMessage in, one out, in the same form."""

    def admit(self) -> None:
        access = self.access()
        match = _PATH.match(self.request.path)
        if match is None or self.request.method != "POST":
            raise invalid_argument(f"Malformed request: {self.request.method} {self.request.path}")
        model = match.group("model")
        if model is None:
            served = self.engine.manager.model_names()
            if len(served) != 1:
                access.require(None, None)  # a share token's bearer uses its model's own path
                raise invalid_argument(
                    f"/api/v1.0/predictions needs exactly one model served; these are: {', '.join(served)} "
                    "(use /seldon/{namespace}/{model}/api/v1.0/predictions)")
            model = served[0]
        access.require(model, "predict")
        self._target = Target(model)
        self._admit_body()

    def write_error_json(self, status: int, message: str) -> None:
        self.clear_header(VERSION_HEADER)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(seldon.error_body(message))

    async def post(self) -> None:
        body = self.take_body()
        if body is None:
            return
        try:
            request = seldon.parse_request(parse_json_body(body))
            target = Target(self._target.name, signature_name=request.signature_name)
            budget = DecodeBudget(self.decode_limits, len(body), body)
            answer = await self._with_timeout(self.engine.predict(
                target, lambda signature: seldon.decode(request, signature, budget), entrypoint="REST",
                route_key=self.request.headers.get(ROUTE_KEY_HEADER)))
            self.set_header(VERSION_HEADER, str(answer.version))
            self.write_json(seldon.encode(request, answer.outputs))
        except ServingError as error:
            self.write_serving_error(error)


def seldon_routes(options: dict) -> list:
    return [(r"(?:/seldon/[^/]+/[^/]+)?/api/v1\.0/predictions/?", SeldonHandler, options)]
