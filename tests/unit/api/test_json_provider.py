"""api.json_provider: the API's bodies are what Flask's own JSON provider writes (compact, keys
sorted, a final newline; dates, UUIDs, decimals, dataclasses as Flask writes them), encoded by
orjson; what orjson cannot do falls back to json; request bodies parse as before."""
from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid

import orjson
import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from markupsafe import Markup

from api.json_provider import OrjsonProvider
from tests.support.api import CFG, new_job


class Colour(str, enum.Enum):
    red = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: float


SAMPLES = [
    {"b": 1, "a": [1, 2.5, None, True, False], "c": {"z": "x", "y": {"k": []}}},
    [{"when": dt.datetime(2026, 12, 3, 14, 5, 6, tzinfo=dt.timezone.utc), "day": dt.date(2026, 1, 2)}],
    {"id": uuid.UUID(int=7), "money": decimal.Decimal("1.10"), "point": Point(1, 0.1), "html": Markup("<b>")},
    {"status": Colour.red, "float": 0.1 + 0.2, "big": 2**62, "neg": -1e-300, "tiny": 5e-324},
    "a string", 3, None,
]


@pytest.fixture
def flask_app() -> Flask:
    return Flask(__name__)  # the providers hold their app by a weak reference


@pytest.fixture
def providers(flask_app: Flask) -> tuple[OrjsonProvider, DefaultJSONProvider]:
    return OrjsonProvider(flask_app), DefaultJSONProvider(flask_app)


@pytest.mark.parametrize("obj", SAMPLES)
def test_dumps_is_byte_for_byte_what_flask_writes(providers, obj) -> None:  # type: ignore[no-untyped-def]
    ours, flasks = providers
    assert ours.dumps(obj) == flasks.dumps(obj, separators=(",", ":"))


@pytest.mark.parametrize("obj", SAMPLES)
def test_responses_are_what_flask_writes(providers, obj) -> None:  # type: ignore[no-untyped-def]
    ours, flasks = providers
    with ours._app.app_context():
        mine, theirs = ours.response(obj), flasks.response(obj)
    assert mine.get_data() == theirs.get_data() and mine.mimetype == theirs.mimetype == "application/json"


def test_debug_mode_indents_as_flask_does(providers) -> None:  # type: ignore[no-untyped-def]
    ours, flasks = providers
    ours._app.debug = True
    with ours._app.app_context():
        body = ours.response({"b": [1], "a": 2}).get_data(as_text=True)
        assert body == flasks.response({"b": [1], "a": 2}).get_data(as_text=True) == '{\n  "a": 2,\n  "b": [\n    1\n  ]\n}\n'


def test_what_orjson_refuses_is_encoded_by_json(providers) -> None:  # type: ignore[no-untyped-def]
    ours, flasks = providers
    huge = {"n": 2**80, "keys": {1: "int key"}}
    assert ours.dumps(huge) == flasks.dumps(huge, separators=(",", ":")) == '{"keys":{"1":"int key"},"n":1208925819614629174706176}'
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        ours.dumps({"x": object()})


def test_the_two_documented_differences(providers) -> None:  # type: ignore[no-untyped-def]
    ours, _ = providers
    assert ours.dumps({"name": "café ✓"}) == '{"name":"café ✓"}'  # UTF-8, not \\u escapes: the same JSON value
    assert json.loads(ours.dumps({"name": "café ✓"})) == {"name": "café ✓"}
    assert ours.dumps({"loss": float("nan"), "inf": float("inf")}) == '{"inf":null,"loss":null}'  # standard JSON


@pytest.mark.parametrize("number", [1e-05, 2.5e-07, 1e16, 1e22, 0.1 + 0.2, 5e-324, 1.7976931348623157e308, -0.0])
def test_floats_are_the_same_numbers(providers, number) -> None:  # type: ignore[no-untyped-def]
    ours, flasks = providers
    mine = json.loads(ours.dumps({"lr": number}))["lr"]
    assert mine == json.loads(flasks.dumps({"lr": number}))["lr"] == number and type(mine) is float


def test_requests_are_still_parsed_by_json(providers) -> None:  # type: ignore[no-untyped-def]
    ours, _ = providers
    assert ours.loads('{"n": 123456789012345678901234567890}') == {"n": 123456789012345678901234567890}  # exact
    nan = ours.loads('{"lr": NaN}')["lr"]
    assert nan != nan  # read, so that validation words the error, as it always did


def test_job_bodies_are_compact_sorted_and_flasks_values(app, client, alice) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(app.json, OrjsonProvider)
    job_id = new_job(app, client, alice, name="json-body", tags=["a", "b"])
    for path in (f"/api/v1/jobs/{job_id}", "/api/v1/jobs"):
        resp = client.get(path, headers=alice)
        assert resp.status_code == 200 and resp.mimetype == "application/json"
        body = resp.get_data()
        flasks = DefaultJSONProvider(app).dumps(json.loads(body), separators=(",", ":"))
        assert json.loads(body) == json.loads(flasks)
        assert body == orjson.dumps(json.loads(body), option=orjson.OPT_SORT_KEYS) + b"\n"  # compact, keys sorted


def test_a_request_body_with_nan_gets_the_field_error_it_got_before(app, client, alice) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({**CFG, "name": "nan-lr", "optim": {**CFG["optim"], "lr": float("nan")}})  # NaN, as json.dumps writes it
    resp = client.post("/api/v1/jobs", data=body, headers={**alice, "Content-Type": "application/json"})
    assert resp.status_code in (400, 422), resp.get_data(as_text=True)
    assert "optim.lr" in resp.get_json()["errors"], resp.get_json()
