"""The live Shopify connection: bulk export (``storeflow sync``), webhooks into Feast (``storeflow webhooks``)
and the mandatory privacy webhooks. See README.md for the app scopes and webhook subscriptions."""
