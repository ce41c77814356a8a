"""Seldon Core v1's ``SeldonMessage`` to and from numpy, as Seldon's TF Serving proxy maps it.

``ndarray`` and ``tensor`` become TF Serving's row format (``{"instances": ...}``) and go through
the same JSON decoding as a :predict body; ``tftensor`` is a TensorProto in JSON; ``jsonData`` is a
TF Serving REST body passed through. The answer takes the request's own form, with ``meta`` always
present, as Seldon's clients expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2

from ..errors import invalid_argument
from ..signature import SignatureSpec
from .json_encode import encode_json, encode_predict_response
from .json_predict import decode_predict_request
from .limits import DecodeBudget
from .tensor_proto import numpy_to_tensor_proto, tensor_proto_to_numpy

FORMS = ("ndarray", "tensor", "tftensor")


@dataclass
class SeldonRequest:
    """Which form a request used, and what it carries (before the signature is known)."""

    form: str  # ndarray, tensor, tftensor or jsonData
    payload: Any
    names: list
    meta: dict

    @property
    def signature_name(self) -> str:
        if self.form == "jsonData" and isinstance(self.payload.get("signature_name"), str):
            return self.payload["signature_name"]
        return ""


def parse_request(message: Any) -> SeldonRequest:
    """Check a SeldonMessage's structure and pick its form."""
    if not isinstance(message, dict):
        raise invalid_argument("A SeldonMessage must be a JSON object")
    meta = message.get("meta", {})
    if not isinstance(meta, dict):
        raise invalid_argument("'meta' must be a JSON object")
    if "jsonData" in message:
        if not isinstance(message["jsonData"], dict):
            raise invalid_argument("jsonData must be a TF Serving REST body (a JSON object)")
        return SeldonRequest("jsonData", message["jsonData"], [], meta)
    if "strData" in message or "binData" in message:
        raise invalid_argument("strData and binData are not served by a TensorFlow model: use data or jsonData")
    data = message.get("data")
    if not isinstance(data, dict):
        raise invalid_argument("A SeldonMessage needs 'data' (ndarray, tensor or tftensor) or 'jsonData'")
    forms = [form for form in FORMS if form in data]
    if len(forms) != 1:
        raise invalid_argument("'data' needs exactly one of ndarray, tensor or tftensor")
    names = data.get("names", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise invalid_argument("'names' must be a list of strings")
    form = forms[0]
    payload = data[form]
    if form == "tensor":
        payload = _tensor_instances(payload)
    elif form == "tftensor":
        if not isinstance(payload, dict):
            raise invalid_argument("tftensor must be a TensorProto in JSON")
        try:
            payload = json_format.ParseDict(payload, tensor_pb2.TensorProto())
        except json_format.ParseError as error:
            raise invalid_argument(f"tftensor is not a valid TensorProto: {error}") from None
    return SeldonRequest(form, payload, names, meta)


def _tensor_instances(tensor: Any) -> list:
    if not isinstance(tensor, dict):
        raise invalid_argument("tensor must be {\"shape\": [...], \"values\": [...]}")
    shape, values = tensor.get("shape"), tensor.get("values")
    if not isinstance(shape, list) or not shape or any(type(d) is not int or d < 0 for d in shape):
        raise invalid_argument(f"tensor.shape must be a non-empty list of non-negative integers, got {shape!r}")
    if not isinstance(values, list) or len(values) != math.prod(shape):
        count = len(values) if isinstance(values, list) else values
        raise invalid_argument(f"tensor.shape {shape} needs {math.prod(shape)} values, got {count!r}")
    holder = np.empty(len(values), dtype=object)  # values are already in memory: this is their size
    holder[:] = values
    return holder.reshape(shape).tolist()


def decode(request: SeldonRequest, signature: SignatureSpec, budget: DecodeBudget) -> dict[str, np.ndarray]:
    """The request's inputs as numpy, keyed by the signature's input aliases."""
    if request.form == "jsonData":
        return decode_predict_request(request.payload, signature, budget)[0]
    if request.form == "tftensor":
        alias = request.names[0] if request.names else None
        if alias is None:
            if len(signature.inputs) != 1:
                raise invalid_argument(f"tftensor feeds one input; name it in 'names' ({', '.join(signature.inputs)})")
            alias = next(iter(signature.inputs))
        if alias not in signature.inputs:
            raise invalid_argument(f"{alias!r} is not one of the inputs: {', '.join(signature.inputs)}")
        return {alias: tensor_proto_to_numpy(request.payload, budget)}
    return decode_predict_request({"instances": request.payload}, signature, budget)[0]


def encode(request: SeldonRequest, outputs: dict[str, np.ndarray]) -> bytes:
    """The answer in the request's form, ``meta`` always there."""
    meta = {key: request.meta[key] for key in ("puid", "tags") if key in request.meta}
    if request.form == "jsonData":
        row = "instances" in request.payload
        return encode_json({"jsonData": orjson.loads(encode_predict_response(outputs, row)), "meta": meta})
    arrays = {alias: np.asarray(array) for alias, array in outputs.items()}
    if request.form == "ndarray" and len(arrays) > 1:
        rows = orjson.loads(encode_predict_response(arrays, True))["predictions"]
        return encode_json({"data": {"names": sorted(arrays), "ndarray": rows}, "meta": meta})
    if len(arrays) != 1:
        raise invalid_argument(f"The {request.form} form answers one output; this signature has: "
                               f"{', '.join(sorted(arrays))} (use ndarray or jsonData)")
    ((alias, array),) = arrays.items()
    names = [f"t:{i}" for i in range(array.shape[1])] if array.ndim == 2 else [alias]
    if request.form == "tftensor":
        proto = numpy_to_tensor_proto(array, tensor_content=False)
        return encode_json({"data": {"names": [alias], "tftensor": json_format.MessageToDict(proto)}, "meta": meta})
    if request.form == "tensor":
        return encode_json({"data": {"names": names, "tensor": {"shape": list(array.shape),
                                                                "values": array.reshape(-1)}}, "meta": meta})
    return encode_json({"data": {"names": names, "ndarray": array}, "meta": meta})


def error_body(message: str) -> bytes:
    """Seldon's error body (its clients read ``status.info``)."""
    return encode_json({"status": {"status": 1, "info": message, "code": -1, "reason": "MICROSERVICE_BAD_DATA"}})
