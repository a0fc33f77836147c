"""An uploaded file, handed to the API as bytes in memory.

BentoML treats a parameter annotated with a ``pathlib`` type as a multipart file field; for
``Path`` it writes the upload to a temporary file first. :class:`UploadedFile` is a ``PurePath``
subclass only so that BentoML reads it as a file field (and documents it so in OpenAPI); its
validator returns the upload's bytes, which Starlette's multipart parser already holds.
"""

from __future__ import annotations

import pathlib
from typing import Any

from pydantic_core import core_schema
from starlette.datastructures import UploadFile


def _read(value: Any) -> bytes:
    if isinstance(value, UploadFile):
        value.file.seek(0)
        return value.file.read()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError("send the file as a multipart/form-data file field")


class UploadedFile(pathlib.PurePosixPath):
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(_read)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        mode = getattr(handler, "mode", "validation")
        return {"type": "file", "format": "image"} if mode == "validation" else {"type": "string", "format": "binary"}
