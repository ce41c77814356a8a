"""Wire formats to and from numpy, one module per format, strictly and without per-element Python loops.

This is the hot path of every request. JSON goes through orjson (the standard library is
only a fallback for the ``NaN``/``Infinity`` literals TF Serving accepts), nested lists of
numbers become arrays in one numpy call, and gRPC tensors are read straight from their
``tensor_content`` bytes when the client sent them that way. Python-level walks over the
data happen only for strings (which are Python objects anyway) and to explain a request
that numpy refused.

The rules follow TF Serving's ``json_tensor.cc`` and TensorFlow's ``Tensor::FromProto``;
where we are stricter (integer ranges, surplus values in a TensorProto) the request would
otherwise have been silently truncated. Every codec checks what a request may decode to
(:mod:`.limits`) before it allocates.

- :mod:`.json_body`: parsing REST bodies, and the fast path for one dense float tensor
- :mod:`.json_predict`: TF Serving's JSON predict requests (row and columnar) to numpy
- :mod:`.json_encode`: numpy to TF Serving's JSON answers
- :mod:`.json_example`: JSON classify/regress bodies to ``tf.Example``
- :mod:`.tensor_proto`: gRPC ``TensorProto`` both ways
- :mod:`.decode_workers`: large REST bodies decoded in worker processes
- :mod:`.values`, :mod:`.limits`: what the codecs share
"""
