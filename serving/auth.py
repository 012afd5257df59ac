"""Who may read what on the prediction server, and the ASGI middleware that enforces it.

The caller is verified by :mod:`storeflow.components.shopify.verify` (Shopify's own verifiers, shared
with the webhook receiver). Which shop's data a caller may read is decided by :func:`may_read_shop`: its
own shop's only. A deployment holds one shop's data (``project.shop_domain``), so a verified caller of
another allowed shop is refused (403 ``other_shop``) before anything is looked up. Which customers a
caller may score (``serving.customer_scope``) is decided after the body is parsed, by
:func:`allowed_customer`: with ``own`` (the default) a storefront caller - checkout UI extension or app
proxy - may score only its logged-in customer; staff (admin UI extensions) any customer of their shop.
"""

from __future__ import annotations

from storeflow.components.shopify.verify import AuthError, Principal, ShopifyVerifier, shop_domain
from storeflow.serving.errors import send_error
from storeflow.serving.protocol import CUSTOMER_HEADER, SHOP_HEADER

_SHOP = SHOP_HEADER.encode()
_CUSTOMER = CUSTOMER_HEADER.encode()

STOREFRONT_KINDS = frozenset({"checkout_ui_extension", "app_proxy"})


def may_read_shop(principal: Principal, shop: str) -> bool:
    """Whether this caller may read ``shop``'s data (its customers' features and scores): only its own.

    Being in ``serving.allowed_shops`` lets a shop's callers in; it does not let shop B read shop A.
    The one place that decides it, e.g. to let an agency's staff read several shops one day.
    """
    return principal.shop == shop


def allowed_customer(principal: Principal, scope: str) -> str | None:
    """The one customer this caller may score (``""``: none, a guest), or None when it may score any.

    ``scope`` ``own``: storefront callers are bound to their logged-in customer; ``shop``: nobody is.
    """
    if scope != "own" or principal.kind not in STOREFRONT_KINDS:
        return None
    return principal.customer_id or ""


class ShopifyAuthMiddleware:
    """ASGI middleware: requests whose path ``protect`` selects must pass ``verifier`` or get a 401, and
    come from the shop whose data is served (``data_shop``, see :func:`may_read_shop`) or get a 403.

    The verified shop is passed on as the ``x-storeflow-shop`` request header, and the one customer the
    caller may score (see :func:`allowed_customer`) as ``x-storeflow-customer``; any such headers sent
    by the client are dropped first.
    """

    def __init__(self, app, verifier: ShopifyVerifier, protect, data_shop: str, customer_scope: str = "own"):
        self.app = app
        self.verifier = verifier
        self.protect = protect
        self.data_shop = shop_domain(data_shop)
        self.customer_scope = customer_scope

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not self.protect(scope["path"]):
            return await self.app(scope, receive, send)
        try:
            raw = self.authorize(scope)
        except AuthError as exc:
            return await send_error(send, 401, exc.code, f"unauthorized: {exc.detail}",
                                    [(b"www-authenticate", b'Bearer realm="storeflow"')])
        except OtherShop as exc:
            return await send_error(send, 403, "other_shop", str(exc))
        return await self.app({**scope, "headers": raw}, receive, send)

    def authorize(self, scope) -> list[tuple[bytes, bytes]]:
        """The request's headers as the app behind should see them (see the class docstring), or
        :class:`AuthError` (401) or :class:`OtherShop` (403). Also the flat V2 route's check
        (:class:`storeflow.serving.http.FlatV2`)."""
        raw, authorization = [], None
        for key, value in scope["headers"]:
            if key in (_SHOP, _CUSTOMER):
                continue
            if key == b"authorization":
                authorization = value
            raw.append((key, value))
        # Fast path: a session token verified before (see the module docstring).
        principal = None
        if authorization is not None:
            value = authorization.decode("latin-1")
            principal = self.verifier.cached_checkout(value)
            if principal is None and value.startswith("Bearer "):  # a storefront's token: nothing else is read
                principal = self.verifier.verify_bearer(value)
        if principal is None:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
            query = scope.get("query_string", b"").decode("latin-1")
            url = f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}{scope['path']}"
            url += f"?{query}" if query else ""
            principal = self.verifier.verify(scope["method"], url, headers)
        if not may_read_shop(principal, self.data_shop):
            raise OtherShop(f"forbidden: this server holds the data of {self.data_shop}; a caller "
                            f"from {principal.shop} may read only its own shop's")
        raw.append((_SHOP, principal.shop.encode()))
        customer = allowed_customer(principal, self.customer_scope)
        if customer is not None:
            raw.append((_CUSTOMER, customer.encode()))
        return raw


class OtherShop(PermissionError):
    """A verified caller of another shop than the one whose data is served (403 ``other_shop``)."""
