"""Who is asking: the user a web request acts for.

On Databricks Apps every request passes through the platform's proxy, which authenticates the user, drops
any ``X-Forwarded-*`` identity headers the client sent and sets its own. Anywhere else those headers are just
text a client chose, so honouring them would let anyone read anyone's conversations by sending
``X-Forwarded-Email: someone@else``. Hence the rule (``web.forwarded_identity``):

* ``auto`` (default): honour the headers only when running as a Databricks App (``DATABRICKS_APP_NAME`` set);
* ``trust``: always honour them (only behind another proxy that authenticates users and overwrites them);
* ``ignore``: never.

When the headers are honoured, a request without them is refused rather than given a default identity (it
did not come through the proxy). When they are not, every request is ``web.default_user`` (else the
config's user, else the OS user): a local, single-user app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..core.config import Config
from ..core.errors import Unauthorized

# In order of preference: the email is what people recognise; the user header is an opaque id.
FORWARDED_HEADERS = ("x-forwarded-email", "x-forwarded-preferred-username", "x-forwarded-user")
MAX_USER_CHARS = 320


class IdentityError(Unauthorized):
    """The request carries no usable identity (answered with 401)."""


@dataclass(frozen=True)
class Identity:
    user: str
    source: str  # the header it came from, or "default"


def header_text(value: str) -> str:
    """A header value as the sender meant it: HTTP carries bytes, which the server hands over decoded as
    Latin-1; proxies send UTF-8 (``jörg@example.com``), so decode it as such when it is valid UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


class IdentityResolver:
    def __init__(self, config: Config, env: Mapping[str, str]) -> None:
        mode = config.web.forwarded_identity
        self.trust_headers = mode == "trust" or (mode == "auto" and bool(env.get("DATABRICKS_APP_NAME")))
        self.default_user = config.web.default_user or config.default_user
        self.admins = frozenset(name.strip() for name in config.web.admins.split(",") if name.strip())

    def is_admin(self, who: Identity) -> bool:
        """May ``who`` start a full re-index and see who started a refresh: one of ``web.admins``, or the
        user of a local single-user app (no forwarded identity) when no admins are named."""
        if self.admins:
            return who.user in self.admins
        return not self.trust_headers

    def resolve(self, headers: Mapping[str, str]) -> Identity:
        if not self.trust_headers:
            return Identity(self.default_user, "default")
        for name in FORWARDED_HEADERS:
            value = header_text(headers.get(name) or "").strip()
            if value:
                if len(value) > MAX_USER_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in value):
                    raise IdentityError(f"the {name} header is not a valid user name")
                return Identity(value, name)
        raise IdentityError(
            "no user identity: the request lacks the X-Forwarded-Email header that the Databricks Apps proxy "
            "sets (open the app through its Databricks URL)"
        )
