"""Request bodies read as they arrive, with a size limit: multipart uploads spooled to disk, JSON bodies.

A multipart body is fed to python-multipart's streaming parser chunk by chunk as the client sends it; the file
part goes straight to a file in the server's spool folder (never into memory), text fields are kept (small, at
most :data:`FIELD_LIMIT` bytes each). A body whose ``Content-Length`` is over the limit is refused before any of it
is read; one without (chunked) is refused as soon as the bytes read pass the limit. Either way: HTTP 413.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from .formats import ApiError

FIELD_LIMIT = 64 * 1024  # bytes per text field: model names, prompts, formats
FORM_SLACK = 4 * FIELD_LIMIT  # body bytes allowed on top of the file limit: boundaries, part headers, fields


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)  # text fields by name, in order
    path: Path | None = None  # the spooled file part
    filename: str | None = None  # its name as the client sent it
    size: int = 0  # its bytes

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default

    def discard(self) -> None:
        """Delete the spooled file (once the request is done with it)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def too_large(limit: int) -> ApiError:
    mb = limit / 2**20
    return ApiError(413, f"request body over the server's limit of {mb:g} MB (--max-upload-mb)",
                    code="request_too_large")


def check_length(request: Request, limit: int, shown: int | None = None) -> None:
    """Refuse a body whose declared length is over ``limit`` before reading it (the message names ``shown``,
    the configured limit, when ``limit`` adds room for the form's own bytes)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(shown or limit)


async def read_form(request: Request, file_limit: int, spool: Path, file_field: str = "file") -> Form:
    """Parse a multipart/form-data body; the part named ``file_field`` is written to a new file in ``spool``."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(400, "expected a multipart/form-data body (an OpenAI transcription request)")
    limit = file_limit + FORM_SLACK
    check_length(request, limit, file_limit)
    form, parts = Form(), _Parts(file_field, file_limit, spool)
    parser = MultipartParser(params[b"boundary"], parts.callbacks())
    read = 0
    try:
        async for chunk in request.stream():
            read += len(chunk)
            if read > limit:
                raise too_large(file_limit)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        parts.abort()
        raise ApiError(400, f"malformed multipart body ({err})") from err
    except BaseException:
        parts.abort()
        raise
    form.fields, form.path, form.filename, form.size = parts.fields, parts.path, parts.filename, parts.size
    return form


async def read_json(request: Request, limit: int) -> dict:
    """A JSON object body of at most ``limit`` bytes."""
    check_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


class _Parts:
    """python-multipart callbacks: collect part headers, write the file part to disk, keep text fields."""

    def __init__(self, file_field: str, file_limit: int, spool: Path) -> None:
        self.file_field, self.file_limit, self.spool = file_field, file_limit, spool
        self.fields: dict[str, list[str]] = {}
        self.path: Path | None = None
        self.filename: str | None = None
        self.size = 0
        self._headers: dict[bytes, bytes] = {}
        self._name, self._value = bytearray(), bytearray()
        self._part: str | None = None  # current part's field name
        self._file = None  # open spool file while its part is read
        self._text = bytearray()

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done, "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._part, self._text = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._name).lower()] = bytes(self._value)
        self._name, self._value = bytearray(), bytearray()

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part = params.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in params or self._part == self.file_field:
            if self._part != self.file_field:
                raise ApiError(400, f"unexpected file field {self._part!r}; send the audio as {self.file_field!r}",
                               param=self._part)
            if self._file is not None or self.path is not None:
                raise ApiError(400, f"more than one {self.file_field!r} part", param=self.file_field)
            fd, name = tempfile.mkstemp(prefix="upload-", dir=self.spool)
            self._file, self.path = os.fdopen(fd, "wb"), Path(name)
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace") or None

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.size += end - start
            if self.size > self.file_limit:
                raise too_large(self.file_limit)
            self._file.write(data[start:end])
        else:
            self._text += data[start:end]
            if len(self._text) > FIELD_LIMIT:
                raise ApiError(400, f"form field {self._part!r} is over {FIELD_LIMIT} bytes", param=self._part)

    def _end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._part is not None:
            self.fields.setdefault(self._part, []).append(self._text.decode("utf-8", "replace"))

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
