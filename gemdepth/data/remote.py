"""Shards and ``index.json`` from URLs: ``http(s)://``, any fsspec URL (``s3://``, ``gs://``,
``hf://``, ``memory://``...) and webdataset's ``pipe:`` commands.

A corpus ``path`` may be:

* a corpus URL (``https://host/corpora/synthetic``): its ``index.json`` is
  ``<url>/index.json`` and its shards are listed there; a URL without an index whose
  filesystem can list folders (fsspec's ``ls``, which HTTP servers answer with an HTML
  listing) is read as a folder of corpus folders;
* shard URLs, one or a brace pattern (``https://host/c/c-{000000..000009}.tar``): the index is
  ``index.json`` beside them and must list them;
* ``pipe:COMMAND`` writing one object to stdout. ``{name}`` in the command stands for the file
  (``pipe:aws s3 cp s3://bucket/corpus/{name} -``: ``index.json`` and then every shard the index
  lists); without it the command's ``.tar`` argument names one shard (brace patterns allowed)
  and its index is read by the same command with that file name swapped for ``index.json``.

Every object is downloaded whole by one pass that hashes it on the way, into memory (or a
temporary file beyond 256 MiB), and only then read as a tar: a shard whose sha256 differs from
its index yields nothing, exactly as for local shards. Transient failures (connection refused
or reset, HTTP 5xx/408/429, a read that stalls for ``timeout`` seconds, a body shorter than
announced or than the index's byte count, a pipe exiting non-zero) are retried ``retries``
times with exponential back-off; a missing object (HTTP 404, ``FileNotFoundError``) and
denied access are not. What is still failing then raises :class:`RemoteShardError` naming the
URL, the error and the attempts; the training stream counts it as a skipped shard.

Openers: fsspec for URLs (its HTTP filesystem is aiohttp with per-read timeouts and real
status codes), webdataset's ``gopen`` for ``pipe:``. Hand-written here: the retry loop (fsspec
does not retry a stream that fails part-way) and the pipe's read timeout (webdataset's ``Pipe``
blocks forever on a stalled command).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import select
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import braceexpand

log = logging.getLogger(__name__)

__all__ = ["RemoteOptions", "RemoteError", "is_url", "display", "expand", "fetch", "fetch_json",
           "join_url", "parent_url", "shard_url_name", "corpus_candidates", "cache_path"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CHUNK = 1 << 20
#: Downloads up to this size stay in memory; larger ones are spooled to a temporary file.
SPOOL_IN_MEMORY = 1 << 28
_HTTP = ("http", "https")
_TRANSIENT_STATUS = {408, 425, 429}


@dataclass(frozen=True)
class RemoteOptions:
    """How remote objects are fetched.

    ``retries``: further attempts after a transient failure (0: none). ``backoff``: seconds
    before the first retry, doubling up to ``max_backoff``. ``timeout``: seconds a connection or
    a read may stall before the attempt fails. ``storage_options``: keyword arguments of the
    fsspec filesystems, per protocol (``{"s3": {"anon": True}, "gs": {...}}``), so sources on
    different storages each get their own. ``cache_dir``: a local
    folder keeping every shard fetched (checked against its sha256 when read), so a shard drawn
    again is read from disk; nothing is evicted (``None``: no cache).
    """

    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 30.0
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ValueError(f"remote options need retries >= 0, backoff >= 0 and timeout > 0, "
                             f"got {self.retries}, {self.backoff}, {self.timeout}")


class RemoteError(OSError):
    """A remote object that could not be fetched. ``url``; ``status`` (HTTP status or pipe exit
    code, if known); ``missing`` (404 / not found: never retried); ``attempts``."""

    def __init__(self, url: str, error: str, *, status: int | None = None, missing: bool = False,
                 attempts: int = 1) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{display(url)}: {error}{tries}")
        self.url, self.error, self.status = url, error, status
        self.missing, self.attempts = missing, attempts


def is_url(path: Any) -> bool:
    """Whether ``path`` is read through :func:`fetch` (a URL other than ``file://``, or ``pipe:``)."""
    if not isinstance(path, str):
        return False
    if path.startswith("pipe:"):
        return True
    return bool(_SCHEME.match(path)) and not path.startswith("file://")


def display(url: str) -> str:
    """``url`` for messages, with any ``user:password@`` removed."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1", url)


# --------------------------------------------------------------------------- URL algebra
def join_url(base: str, name: str) -> str:
    """The URL of file ``name`` in corpus ``base`` (a ``pipe:`` template fills ``{name}``)."""
    if base.startswith("pipe:"):
        if "{name}" not in base:
            raise ValueError(f"{base}: a pipe: corpus needs '{{name}}' where the file name goes, "
                             "e.g. 'pipe:aws s3 cp s3://bucket/corpus/{name} -'")
        return base.replace("{name}", name)
    return base.rstrip("/") + "/" + name


def parent_url(url: str) -> str:
    """The corpus of one shard URL: its folder, or for ``pipe:`` commands a ``{name}`` template
    (the last argument ending in ``.tar`` with its file name swapped for ``{name}``)."""
    if url.startswith("pipe:"):
        tokens = shlex.split(url[5:])
        hits = [t for t in tokens if t.endswith(".tar")]
        if not hits:
            raise ValueError(f"{url}: cannot tell which argument is the shard; write the corpus "
                             "as 'pipe:COMMAND' with '{name}' where the file name goes")
        shard = hits[-1]
        folder = shard.rsplit("/", 1)[0] + "/" if "/" in shard else ""
        at = url.rindex(shard)
        return url[:at] + folder + "{name}" + url[at + len(shard):]
    return url.split("?", 1)[0].rsplit("/", 1)[0]


def shard_url_name(url: str) -> str:
    """The file name of a shard URL (``pipe:`` commands: of its ``.tar`` argument)."""
    if url.startswith("pipe:"):
        hits = [t for t in shlex.split(url[5:]) if t.endswith(".tar")]
        return hits[-1].rsplit("/", 1)[-1] if hits else url
    return url.split("?", 1)[0].rsplit("/", 1)[-1]


def expand(url: str) -> list[str]:
    """Brace expansion of a URL pattern (``{name}`` in ``pipe:`` templates stays as it is)."""
    if "{" not in url:
        return [url]
    return [u.replace("\0", "{name}") for u in braceexpand.braceexpand(url.replace("{name}", "\0"))]


# --------------------------------------------------------------------------- errors
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status of a response error in the chain (``.status``, as aiohttp and urllib
    set it; not the ``.code`` of aiohttp's parser errors, which are no responses)."""
    for e in _chain(exc):
        status = getattr(e, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    return None


_TRANSIENT_NAMES = {"ClientConnectionError", "ClientConnectorError", "ClientOSError",
                    "ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
                    "IncompleteRead", "RemoteDisconnected", "FSTimeoutError"}


def _classify(exc: BaseException) -> tuple[bool, bool, int | None]:
    """``(transient, missing, HTTP status or None)`` of a failed attempt."""
    kinds = list(_chain(exc))
    if any(isinstance(e, (TimeoutError, ConnectionError, EOFError, _Truncated, _PipeFailed))
           or type(e).__name__ in _TRANSIENT_NAMES for e in kinds):
        return True, False, _status_of(exc)
    status = _status_of(exc)
    if status is not None:
        return status >= 500 or status in _TRANSIENT_STATUS, status == 404, status
    if any(isinstance(e, FileNotFoundError) for e in kinds):
        return False, True, None
    if any(isinstance(e, PermissionError) for e in kinds):
        return False, False, None
    return any(isinstance(e, OSError) for e in kinds), False, None


def _describe(exc: BaseException, url: str) -> str:
    """The error of a failed attempt in words: HTTP status, exception, its cause."""
    transient, missing, status = _classify(exc)
    if missing:
        return ("HTTP 404 Not Found" if url.split("://", 1)[0] in _HTTP and status in (None, 404)
                else "not found (no such object)")
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if status is not None and str(status) not in text:
        text = f"HTTP {status} ({text})"
    cause = exc.__cause__
    if cause is not None and str(cause) and type(cause).__name__ not in text \
            and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


class _Truncated(OSError):
    """The body ended before the announced or indexed size (retried)."""


class _PipeFailed(OSError):
    """A ``pipe:`` command stalled or exited non-zero (retried)."""


# --------------------------------------------------------------------------- opening
def _fs_and_path(url: str, opts: RemoteOptions) -> tuple[Any, str]:
    import fsspec

    protocol = url.split("://", 1)[0]
    kwargs = dict(opts.storage_options.get(protocol) or {})
    if protocol in _HTTP:
        import aiohttp

        client = dict(kwargs.pop("client_kwargs", {}))
        client.setdefault("timeout", aiohttp.ClientTimeout(
            total=None, sock_connect=opts.timeout, sock_read=opts.timeout))
        kwargs["client_kwargs"] = client
    fs, path = fsspec.core.url_to_fs(url, **kwargs)
    return fs, path


def _http_open(fs: Any, path: str) -> IO[bytes]:
    # `size=` makes fsspec skip its HEAD probe, which reports every failure (5xx, refused
    # connection) as FileNotFoundError; block_size=0: one streaming GET (no Range requests,
    # which simple servers do not answer)
    return fs.open(path, "rb", block_size=0, size=-1)


def _read_fsspec(url: str, opts: RemoteOptions) -> Iterator[bytes]:
    fs, path = _fs_and_path(url, opts)
    protocol = url.split("://", 1)[0]
    fh = _http_open(fs, path) if protocol in _HTTP else fs.open(path, "rb")
    with fh:
        while block := fh.read(_CHUNK):
            yield block


def _read_pipe(url: str, opts: RemoteOptions) -> Iterator[bytes]:
    """Stdout of a ``pipe:`` command through webdataset's ``Pipe`` (exit status checked);
    reads wait at most ``timeout`` seconds (select on the pipe), then the command is killed."""
    from webdataset.gopen import gopen_pipe

    pipe = gopen_pipe(url, "rb")
    fd = pipe.stream.fileno()
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], opts.timeout)
            if not ready:
                raise _PipeFailed(f"no output for {opts.timeout:g} s (command killed)")
            block = os.read(fd, _CHUNK)
            if not block:
                break
            yield block
        try:
            pipe.close()
        except OSError as exc:  # non-zero exit
            raise _PipeFailed(f"command exited with status {pipe.status}") from exc
    finally:
        if pipe.proc.poll() is None:
            pipe.proc.kill()
            pipe.proc.wait()


def _stream(url: str, opts: RemoteOptions) -> Iterator[bytes]:
    return _read_pipe(url, opts) if url.startswith("pipe:") else _read_fsspec(url, opts)


# --------------------------------------------------------------------------- fetching
def _download(url: str, opts: RemoteOptions, size: int | None) -> tuple[IO[bytes], str, int]:
    """One attempt: the whole object into a spooled file, hashed on the way."""
    digest = hashlib.sha256()
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    n = 0
    try:
        for block in _stream(url, opts):
            digest.update(block)
            out.write(block)
            n += len(block)
        if size is not None and size >= 0 and n < size:
            raise _Truncated(f"stream ended after {n} of {size} bytes")
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out, digest.hexdigest(), n


def fetch(url: str, opts: RemoteOptions | None = None, *, size: int | None = None,
          sleep: Callable[[float], None] = time.sleep) -> tuple[IO[bytes], str]:
    """The bytes of ``url`` (a rewound file object) and their sha256.

    ``size`` (bytes, from the index) turns a short body into a (retried) truncation. Transient
    failures are retried with exponential back-off; the last failure, or a permanent one
    (missing, denied), raises :class:`RemoteError` naming the URL and the error.
    """
    opts = opts or RemoteOptions()
    attempts = 0
    while True:
        attempts += 1
        try:
            fh, digest, _ = _download(url, opts, size)
            return fh, digest
        except Exception as exc:
            transient, missing, status = _classify(exc)
            if missing and status is None and url.split("://", 1)[0] in _HTTP:
                status = 404
            if not transient or attempts > opts.retries:
                raise RemoteError(url, _describe(exc, url), status=status, missing=missing,
                                  attempts=attempts) from exc
            wait = min(opts.max_backoff, opts.backoff * 2 ** (attempts - 1))
            log.warning("%s: %s; retry %d of %d in %.1f s", display(url), _describe(exc, url),
                        attempts, opts.retries, wait)
            sleep(wait)


def cache_path(url: str, opts: RemoteOptions | None) -> Path | None:
    """Where ``url``'s bytes are cached (``None`` without ``cache_dir``): a hash of the URL
    (credentials and commands never become file names) and the shard's file name."""
    if opts is None or not opts.cache_dir:
        return None
    tag = hashlib.sha256(url.encode("utf-8")).hexdigest()[:24]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", shard_url_name(url))[-80:]
    return Path(opts.cache_dir) / f"{tag}-{name}"


def fetch_json(url: str, opts: RemoteOptions | None = None) -> Any:
    """A JSON document at ``url`` (an ``index.json``), fetched like a shard."""
    fh, _ = fetch(url, opts)
    with fh:
        data = fh.read()
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RemoteError(url, f"not valid JSON ({exc})") from exc


def corpus_candidates(url: str, opts: RemoteOptions | None = None) -> list[str]:
    """Sub-folders of ``url`` (a folder of corpus folders), listed through fsspec; ``[]`` where
    the filesystem cannot list it (``pipe:``, or a server without folder listings)."""
    if url.startswith("pipe:"):
        return []
    opts = opts or RemoteOptions()
    try:
        fs, path = _fs_and_path(url, opts)
        entries = fs.ls(path, detail=True)
    except Exception as exc:  # listing is a fallback: any failure means "not listable"
        log.debug("cannot list %s: %s", display(url), exc)
        return []
    protocol = url.split("://", 1)[0]
    base = url.rstrip("/")
    out = []
    for e in entries:
        name = str(e.get("name", "")).rstrip("/")
        if e.get("type") != "directory" and not str(e.get("name", "")).endswith("/"):
            continue
        leaf = name.rsplit("/", 1)[-1]
        if not leaf or leaf in (".", ".."):
            continue
        child = name if protocol in _HTTP else f"{base}/{leaf}"
        if protocol in _HTTP and not child.startswith(base + "/"):
            continue  # links out of the folder (parent, other hosts)
        out.append(child)
    return sorted(set(out))
