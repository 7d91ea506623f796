"""The API's JSON encoding: Flask's JSON provider with orjson doing the work.

Encoding the response body was ~7 % of a status poll's CPU and ~14 % of a page of 50 jobs
(``json.dumps`` with sorted keys, then ``str`` to bytes); orjson does the same in a fraction
of the time (docs/performance.md). The body stays what Flask's own provider writes: compact,
keys sorted, a newline at the end, indented in debug mode; dates, UUIDs, decimals, dataclasses
and ``__html__`` objects go through Flask's own ``default``. Two differences, both towards
standard JSON, and a third in spelling only: non-ASCII characters are written as UTF-8 rather than ``\\uXXXX`` escapes, and a
NaN or infinity is written as ``null`` (json.dumps writes ``NaN``, which no JSON parser must
accept; the service's records are finite by construction: their files are written with
``allow_nan=False``). Floats are the same numbers, though a few are spelled differently (orjson writes
``0.00001`` where json.dumps writes ``1e-05``). Anything orjson refuses (an integer beyond 64
bits, say) is encoded by json.dumps. Request bodies are still parsed by json.loads: they are
small, and orjson would read an integer beyond 64 bits as a float where json.loads keeps it exact.
"""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

# orjson would write dates as ISO strings and dataclasses by itself; Flask writes HTTP dates and
# dataclasses.asdict: passing them to Flask's default keeps its output. (Enums and str/int/dict/list
# subclasses: their values, as json.dumps writes them.)
_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class OrjsonProvider(DefaultJSONProvider):
    def _encode(self, obj: Any, *, indent: bool = False) -> bytes | None:
        option = _PASSTHROUGH | (orjson.OPT_SORT_KEYS if self.sort_keys else 0) | (orjson.OPT_INDENT_2 if indent else 0)
        try:
            return orjson.dumps(obj, default=self.default, option=option)
        except orjson.JSONEncodeError:
            return None  # json.dumps encodes it (or raises its own TypeError)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # options for json.dumps (an indent, separators, cls...)
            return super().dumps(obj, **kwargs)
        encoded = self._encode(obj)
        return super().dumps(obj, separators=(",", ":")) if encoded is None else encoded.decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        indented = (self.compact is None and self._app.debug) or self.compact is False
        encoded = self._encode(obj, indent=indented)
        if encoded is None:
            return super().response(obj)
        return self._app.response_class(encoded + b"\n", mimetype=self.mimetype)


__all__ = ["OrjsonProvider"]
