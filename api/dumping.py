"""Dumping many objects with one marshmallow schema, at a fraction of ``Schema.dump``'s cost.

``Schema.dump`` does, for every field of every object, a chain of generic calls (the field's
``serialize``, its ``get_value``, the schema's accessor, ``utils.get_value`` with its dotted-path
check, then ``_serialize``): for a page of 50 jobs that is about 3,400 field dumps and ~60 % of the
request's CPU (bench/profile_reads.py). :func:`compile_dump` reads the schema's fields once and
builds, per field, the getter and the conversion the field's own ``_serialize`` would apply, so a
dump is one loop of plain calls per object. The schema stays the one description of the body
(the OpenAPI document is generated from it, and the result is the same as ``schema.dump``'s:
tests/unit/api/test_dumping.py compares them); a field this module does not know, or a schema
with pre/post-dump hooks, is dumped by marshmallow itself.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import marshmallow as ma
from marshmallow import fields, utils
from marshmallow.decorators import POST_DUMP, PRE_DUMP
from sqlalchemy.orm.attributes import InstrumentedAttribute

Convert = Callable[[Any], Any]  # a dumped value from a present, non-missing value
Dump = Callable[[Any], Any]     # a schema's dump of one object

_MISSING = ma.missing
# Whether a type has __getitem__ (marshmallow asks each object; the answer is its type's, since
# obj[key] looks the method up on the type).
_SUBSCRIPTABLE: dict[type, bool] = {}
_DIRECT: dict[tuple[type, frozenset[str]], frozenset[str]] = {}  # _direct_attributes


def _text(value: Any) -> Any:
    return None if value is None else (value if type(value) is str else utils.ensure_text_type(value))


def _number(num_type: type) -> Convert:
    return lambda value: None if value is None else num_type(value)


def _datetime(value: Any) -> Any:
    return None if value is None else value.isoformat()  # marshmallow's "iso" format: utils.isoformat


def _mapping(value: Any) -> Any:
    return None if value is None else dict(value)


def _raw(value: Any) -> Any:
    return value


def _own(field: fields.Field, base: type) -> bool:
    """``field`` serializes exactly as ``base`` does (a subclass may change only where it reads)."""
    return isinstance(field, base) and type(field)._serialize is base._serialize


def _converter(field: fields.Field) -> Convert | None:
    """What ``field._serialize`` does to a value, as one plain function; None: not known here."""
    if _own(field, fields.String):
        return _text
    if (_own(field, fields.Integer) or _own(field, fields.Float)) and not field.as_string:
        return _number(field.num_type)
    if _own(field, fields.DateTime) and (field.format or field.DEFAULT_FORMAT) in ("iso", "iso8601") \
            and type(field).SERIALIZATION_FUNCS.get("iso") is utils.isoformat:
        return _datetime
    if _own(field, fields.Dict):
        if field.key_field is None and field.value_field is None:
            return _mapping
        keys = _raw if field.key_field is None else _converter(field.key_field)
        values = _raw if field.value_field is None else _converter(field.value_field)
        if keys is None or values is None:
            return None
        return lambda value: None if value is None else {keys(k): values(v) for k, v in value.items()}
    if type(field) is fields.Raw:
        return _raw
    if _own(field, fields.List):
        inner = _converter(field.inner)
        if inner is None:
            return None
        return lambda value: None if value is None else [inner(each) for each in value]
    if _own(field, fields.Nested):
        schema = field.schema
        dump = compile_dump(schema)
        if schema.many or field.many:
            return lambda value: None if value is None else [dump(each) for each in value]
        return lambda value: None if value is None else dump(value)
    return None


def _attribute(field: fields.Field, name: str) -> str | None:
    """The one attribute (or key) the field's value is read from; None when it reads otherwise:
    a derived value (api.schemas._Derived), a dotted path, a ``get_value`` of its own."""
    if type(field).get_value is not fields.Field.get_value:
        return None
    key = field.attribute or name
    return None if "." in key else key


def _general_getter(field: fields.Field, name: str) -> Callable[[Any], Any]:
    derive = getattr(field, "derive", None)
    if derive is not None:
        return derive
    return lambda obj: field.get_value(obj, name, accessor=utils.get_value)  # Schema.get_attribute's


def _plain_field_dump(field: fields.Field, name: str, schema: ma.Schema) -> Callable[[Any], Any]:
    return lambda obj: field.serialize(name, obj, accessor=schema.get_attribute)


def _direct_attributes(kind: type, attrs: frozenset[str]) -> frozenset[str]:
    """Those of ``attrs`` that ``getattr(obj, attr)`` reads from the instance's ``__dict__`` when
    they are there: a mapped column or relationship (SQLAlchemy's descriptor returns the loaded
    value from it, else loads it), or no class attribute at all. Reading the dict skips the
    descriptor call (~a fifth of a dump of ORM rows); anything else (a property) goes by getattr."""
    known = _DIRECT.get((kind, attrs))
    if known is None:
        if kind.__getattribute__ is not object.__getattribute__ or not hasattr(kind, "__dict__"):
            known = frozenset()
        else:
            known = frozenset(a for a in attrs if isinstance(
                inspect.getattr_static(kind, a, None), (type(None), InstrumentedAttribute)))
        _DIRECT[(kind, attrs)] = known
    return known


def _subscriptable(kind: type) -> bool:
    known = _SUBSCRIPTABLE.get(kind)
    if known is None:
        known = _SUBSCRIPTABLE[kind] = hasattr(kind, "__getitem__")
    return known


# One field of a compiled schema: the output key; the attribute read (None: ``get`` reads it); the
# value's conversion (None: ``get`` is marshmallow's whole dump of the field); its dump_default.
_Plan = tuple[str, "str | None", Callable[[Any], Any], "Convert | None", Any]


def compile_dump(schema: ma.Schema) -> Dump:
    """``schema.dump`` of one object, as a plain function (built once per schema instance)."""
    cached = getattr(schema, "_compiled_dump", None)
    if cached is not None:
        return cached
    if schema._hooks[PRE_DUMP] or schema._hooks[POST_DUMP] or schema.dict_class is not dict \
            or type(schema).get_attribute is not ma.Schema.get_attribute:
        # marshmallow's own dump (ma.Schema.dump, not schema.dump: a CompiledDump schema's dump
        # comes back here)
        dump: Dump = lambda obj: ma.Schema.dump(schema, obj, many=False)  # noqa: E731
        schema._compiled_dump = dump  # type: ignore[attr-defined]
        return dump
    plans: list[_Plan] = []
    for name, field in schema.dump_fields.items():
        key = field.data_key if field.data_key is not None else name
        derived = hasattr(field, "derive")
        reads_itself = type(field).get_value is not fields.Field.get_value and not derived
        convert = None if reads_itself or not field._CHECK_ATTRIBUTE else _converter(field)
        if convert is None:  # dumped by marshmallow (missing and defaults included)
            plans.append((key, None, _plain_field_dump(field, name, schema), None, _MISSING))
        else:
            plans.append((key, None if derived else _attribute(field, name), _general_getter(field, name), convert,
                          field.dump_default))

    attrs = frozenset(plan[1] for plan in plans if plan[1] is not None)

    def dump(obj: Any) -> dict[str, Any]:
        # How marshmallow reads ``attr`` (utils._get_value_for_key), decided once per object: a
        # row (no __getitem__: obj[attr] would raise) by getattr, a dict by key, others as it does.
        kind = type(obj)
        is_dict = kind is dict
        by_attribute = not is_dict and not _subscriptable(kind)
        if by_attribute:
            direct = _direct_attributes(kind, attrs)
            loaded = obj.__dict__ if direct else {}
        out: dict[str, Any] = {}
        for key, attr, get, convert, default in plans:
            if attr is None:
                value = get(obj)
            elif by_attribute:
                value = loaded[attr] if attr in direct and attr in loaded else getattr(obj, attr, _MISSING)
            elif is_dict:
                value = obj[attr] if attr in obj else getattr(obj, attr, _MISSING)
            else:
                value = utils._get_value_for_key(obj, attr, _MISSING)
            if convert is None:
                if value is not _MISSING:
                    out[key] = value
                continue
            if value is _MISSING:
                value = default() if callable(default) else default
                if value is _MISSING:
                    continue
            out[key] = convert(value)
        return out

    schema._compiled_dump = dump  # type: ignore[attr-defined]
    return dump


class CompiledDump:
    """A schema mixin: ``dump`` of one object goes through :func:`compile_dump` (the same JSON,
    the same OpenAPI document); ``many`` dumps stay marshmallow's. For a response dumped on every
    request, like a job's status poll."""

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        if many or (many is None and self.many):  # type: ignore[attr-defined]
            return super().dump(obj, many=many)  # type: ignore[misc]
        return compile_dump(self)(obj)  # type: ignore[arg-type]


class CompiledList(fields.List):
    """``fields.List(fields.Nested(S))`` (documented as that in the OpenAPI document) whose items
    are dumped by :func:`compile_dump` of ``S``: for a list of many objects of one schema."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> list[Any] | None:
        if value is None:
            return None
        inner = self.inner
        if not isinstance(inner, fields.Nested) or kwargs:
            return super()._serialize(value, attr, obj, **kwargs)
        dump = _converter(inner)
        if dump is None:
            return super()._serialize(value, attr, obj, **kwargs)
        return [dump(each) for each in value]
