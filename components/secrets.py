"""Passwords in settings: a setting names the variable that holds its password, never the password.

A connection setting (the Redis connection string, a SQL registry URL) writes ``${VAR}`` where its password
goes (``redis:6379,password=${REDIS_PASSWORD}``), or for its whole value (``${REDIS_CONNECTION_STRING}``).
config_json, generated files and logs carry that reference; the variable is read only where the connection
is made (Feast expands ``${VAR}`` itself when it loads feature_store.yaml). On a cluster the variables come
from Kubernetes Secrets, so a secret is never a pipeline parameter.

Pure functions over strings: the config model decides which settings are connection settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

PasswordOf = Callable[[str], "str | None"]


class MissingSecret(ValueError):
    """A setting refers to an environment variable that is not set where the connection is made."""


def references(value: str) -> list[str]:
    """The variables ``value`` refers to, in order."""
    return REFERENCE.findall(value)


def reference(variable: str) -> str:
    return f"${{{variable}}}"


def is_literal(password: str | None) -> bool:
    """True when a password is (partly) written out rather than referred to."""
    return bool(password) and bool(REFERENCE.sub("", password))


def redis_password(connection_string: str) -> str | None:
    """The password of a Feast Redis connection string (``host:port,db=0,ssl=true,password=...``)."""
    for part in connection_string.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip() == "password":
            return value
    return None


def url_password(url: str) -> str | None:
    """The password of a URL: its userinfo (``scheme://user:password@host``) or a ``password`` query value."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a plain (or Windows drive) path holds no password
        return None
    in_query = parse_qs(parts.query).get("password")
    return parts.password or (in_query[0] if in_query else None)


def missing(value: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The variables ``value`` refers to that are not set."""
    environ = os.environ if environ is None else environ
    return [name for name in references(value) if name not in environ]


def require(settings: Iterable[tuple[str, str]], environ: Mapping[str, str] | None = None) -> None:
    """Fail, naming each variable and the setting that needs it, when a referred-to variable is unset."""
    problems = [f"{setting} needs the environment variable {name}, which is not set"
                for setting, value in settings for name in missing(value, environ)]
    if problems:
        raise MissingSecret("; ".join(problems))


def expand(value: str, setting: str, environ: Mapping[str, str] | None = None) -> str:
    """``value`` with its references replaced from the environment: only at the point of use, never stored."""
    environ = os.environ if environ is None else environ
    require([(setting, value)], environ)
    return REFERENCE.sub(lambda match: environ[match.group(1)], value)
