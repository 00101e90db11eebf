"""Prefect's cache records of stores written before the one cache, read without trusting them.

A record (records/<cache key>) is the JSON Prefect persisted for a cached stage: its
metadata names a serializer and a decoder, and its result is an ArtifactRef encoded
as {"__class__": ..., "data": ...}. Prefect's own reader imports whatever decoder
and class a record names (and its `coerce_old_format` lets top-level `serializer` and
`data` keys override the checked ones, down to a pickle), so a record altered on a
shared store could make it run other code. Prefect no longer reads records at all
(artifacts/cache.py); this reader takes them as plain JSON, and anything but exactly
`metadata` and `result` holding our ArtifactRef with Prefect's standard JSON decoder is
refused.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from artifacts.store import DIGEST_PATTERN, ArtifactRef, ArtifactStore

STANDARD_DECODER = "prefect.serializers.prefect_json_object_decoder"
REF_CLASS = f"{ArtifactRef.__module__}.{ArtifactRef.__qualname__}"


class RecordError(ValueError):
    """A record that must not be used."""


def record_path(store: ArtifactStore, key: str) -> str:
    if not DIGEST_PATTERN.match(key):
        raise RecordError(f"not a cache key: {key!r}")
    return f"{store.records_path}/{key}"


def read_record(store: ArtifactStore, key: str) -> ArtifactRef:
    """The ArtifactRef a record points to; RecordError if it is anything else."""
    try:
        with store.fs.open(record_path(store, key), "rb") as handle:
            record = json.loads(handle.read())
        if set(record) != {"metadata", "result"}:
            raise RecordError(f"record has keys {sorted(record)}, not exactly metadata and result")
        serializer = record["metadata"]["serializer"]
        if serializer.get("type") != "json" or serializer.get("object_decoder", STANDARD_DECODER) != STANDARD_DECODER:
            raise RecordError(f"record asks for serializer {serializer.get('type')!r} / decoder {serializer.get('object_decoder')!r}")
        result = json.loads(record["result"])
        if result.get("__class__") != REF_CLASS:
            raise RecordError(f"record holds {result.get('__class__')!r}, not an ArtifactRef")
        return ArtifactRef.model_validate(result["data"])
    except RecordError:
        raise
    except FileNotFoundError:
        raise
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise RecordError(f"record unreadable ({type(exc).__name__})") from None


def record_keys(store: ArtifactStore) -> list[str]:
    try:
        names = store.fs.ls(store.records_path, detail=False)
    except FileNotFoundError:
        return []
    keys = (name.rstrip("/").rsplit("/", 1)[-1] for name in names)
    return sorted(key for key in keys if DIGEST_PATTERN.match(key))


def drop_record(store: ArtifactStore, key: str) -> None:
    path = record_path(store, key)
    if store.fs.exists(path):
        store.fs.rm(path)
